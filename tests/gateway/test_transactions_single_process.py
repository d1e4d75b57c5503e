"""The inbound transaction tests (``test_transactions``) against ``mxfed run --single-process``:
every part in one process, still calling each other over gRPC with mutual TLS."""

from tests.gateway.test_transactions import *  # noqa: F403

SCENE_SINGLE_PROCESS = True


def test_the_scene_runs_every_part_in_one_process(scene) -> None:  # noqa: ANN001
    import psutil

    assert scene.mxfed.process is not None
    assert psutil.Process(scene.mxfed.process.pid).children(recursive=True) == []
