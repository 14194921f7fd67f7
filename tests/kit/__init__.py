"""Helpers shared by the test folders, imported as ``kit.*`` (pyproject's pytest ``pythonpath``
puts ``tests/`` on the path; no test edits ``sys.path``).

- ``kit.net``: a free loopback port.
- ``kit.home``: stopping what a test home's inference process left running.
- ``kit.load``: threads sending 1-row predictions while a version changes.
- ``kit.children``: a clean environment for child processes; one training run in a child
  process (parallel writers on one store).
- ``kit.shell``: the throwaway IPython shell and ``run_cell``; ``kit.kernel``: a real ipykernel
  through jupyter_client.
- ``kit.serving``, ``kit.tensors``, ``kit.mlflow_serve``: models registered as kernel-magics
  registers them, models of every input kind, the real ``mlflow models serve``.
- ``kit.model_dirs``: model folders as MLflow writes them, for the in-process tests.
- ``kit.lab``: a real ``jupyter lab`` for the browser tests; ``kit.ray_head``: the Ray tests'.
"""
