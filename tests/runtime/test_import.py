"""naslora_deploy.runtime must import where torch cannot."""

from conftest import run_without_torch


def test_runtime_imports_without_torch():
    result = run_without_torch(
        """
        import naslora_deploy.runtime
        import naslora_deploy
        assert naslora_deploy.__version__
        assert "torch" not in sys.modules
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
