"""The armada_ray.model package as a whole: plain torch, no Ray, DeepSpeed or MLflow."""

from __future__ import annotations

import subprocess
import sys

from _paths import ROOT


def test_model_package_imports_without_ray_deepspeed_mlflow():
    code = (
        "import sys\n"
        "for name in ('ray', 'deepspeed', 'mlflow'): sys.modules[name] = None\n"
        "import armada_ray.model, armada_ray.model.build, armada_ray.model.losses, armada_ray.model.aligner\n"
        "from armada_ray.config import StudentConfig, LoraConfig\n"
        "s, tok = armada_ray.model.build_student(StudentConfig(model='tiny-llama', lora=LoraConfig(r=2)), 2, 4)\n"
        "s(**tok(['a b c'], return_tensors='pt'))\n"
        "bad = [n for n in ('ray', 'deepspeed', 'mlflow') if sys.modules.get(n) is not None]\n"
        "assert not bad, bad\n"
        "print('clean')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "clean" in res.stdout, res.stderr[-3000:]
    # and the sources name none of them
    for src in (ROOT / "armada_ray" / "model").glob("*.py"):
        text = src.read_text()
        for name in ("ray", "deepspeed", "mlflow"):
            assert f"import {name}" not in text and f"from {name}" not in text, (src.name, name)
