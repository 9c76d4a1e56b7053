"""A test aid, put on PYTHONPATH by the `trained_project` fixture with NEUROPREDICT_TRACE_READS set
to a folder: every pipeline stage records which params keys and which neuropredict modules it
read, in <folder>/<script>.json at exit. tests/e2e/test_pipeline.py checks that dvc.yaml lists
exactly these for each stage, so `dvc repro` reruns what a change affects and nothing else."""

import os

if os.environ.get("NEUROPREDICT_TRACE_READS"):
    import atexit
    import json
    import sys
    from pathlib import Path

    from neuropredict.settings import schema

    _read: set[str] = set()
    _loaded: list[bool] = []  # what load_params reads to validate is not what the stage reads

    def _trace(cls, prefix: str, leaves: set[str]) -> None:
        def getattribute(self, name, _leaves=leaves, _prefix=prefix):
            if _loaded and name in _leaves:
                _read.add(f"{_prefix}.{name}" if _prefix else name)
            return object.__getattribute__(self, name)

        cls.__getattribute__ = getattribute

    _sections = {name: f.annotation for name, f in schema.Params.model_fields.items()
                 if isinstance(f.annotation, type) and issubclass(f.annotation, schema.BaseModel)}
    _trace(schema.Params, "", set(schema.Params.model_fields) - set(_sections))
    for _name, _cls in _sections.items():
        _trace(_cls, _name, set(_cls.model_fields))

    _load_params = schema.load_params

    def _load_and_trace(*args, **kwargs):
        params = _load_params(*args, **kwargs)
        _loaded.append(True)
        return params

    schema.load_params = _load_and_trace

    def _save() -> None:
        script = Path(sys.argv[0])
        if script.parent.name != "pipelines":  # dvc itself, or another program
            return
        modules = sorted(m.__file__ for name, m in list(sys.modules.items())
                         if name.split(".")[0] == "neuropredict" and getattr(m, "__file__", None))
        folder = Path(os.environ["NEUROPREDICT_TRACE_READS"])
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{script.stem}.json").write_text(json.dumps({"params": sorted(_read), "modules": modules}))

    atexit.register(_save)
