"""naslora_deploy.runtime must import where torch cannot."""

import subprocess
import sys
import textwrap


def test_runtime_imports_without_torch():
    code = textwrap.dedent(
        """
        import builtins, sys
        real_import = builtins.__import__
        def guarded(name, *args, **kwargs):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is blocked in this test")
            return real_import(name, *args, **kwargs)
        builtins.__import__ = guarded
        import naslora_deploy.runtime
        import naslora_deploy
        assert naslora_deploy.__version__
        assert "torch" not in sys.modules
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
