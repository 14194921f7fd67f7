"""Model formats: how a registered version's folder becomes something that answers a batch.

Shared by the inference process (``serving/request/model.py`` loads what a worker serves) and
the kernel (``evaluation.loading`` for ``%evaluate``, ``%explain`` and ``%compare``;
``optimize`` for ``%optimize``), so what the kernel measures is what ``%deploy`` serves.
Nothing here imports mlflow, IPython, or a format's runtime before a version of it loads.

- ``loaders.py``: the registry. ``Graph`` (``fn(batch tensor) -> output``, an optional fixed
  batch size), ``@loader`` to register a format, ``loader_for(folder, km.format)``, and
  ``FORMAT_MODULES``, the modules that register the formats.
- ``pt2.py`` (``torch.export`` programs), ``torch_pickle.py`` (MLflow's pickled modules),
  ``onnx.py`` (onnxruntime): one module per format.
- ``model_files.py``: the signature and input example from the MLflow folder, without mlflow.
- ``verified.py``: the folder of a version, checked against its registered SHA-256 first.

Adding a format (scikit-learn, a language model, a Keras file) is one small module and one
registry entry:

1. ``kernel_magics/formats/sklearn.py``::

       from kernel_magics.formats.loaders import Graph, loader

       @loader("sklearn", "model.pkl", flavor="sklearn")
       def load_sklearn(path: Path) -> Graph:
           model = ...  # import the runtime here, inside the function
           return Graph(lambda batch: torch.as_tensor(model.predict_proba(batch.numpy())))

   ``"sklearn"`` is the version's ``km.format`` tag, ``"model.pkl"`` the model's file inside
   the MLflow folder, ``flavor`` the flavor its ``MLmodel`` declares.
2. ``"kernel_magics.formats.sklearn"`` added to ``loaders.FORMAT_MODULES``.

Every route, the batcher, hot swap, the hash check, ``%evaluate`` and ``%explain`` then serve
and read it; registering such versions (tagging ``km.format``) is ``runs.py``'s side.
"""
