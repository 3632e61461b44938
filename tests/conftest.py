"""Shared by every test directory."""
import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_protocol_cache(tmp_path_factory):
    """The evaluation's on-disk protocol cache goes to this run's temporary folder, never the user's (session
    scope: module fixtures that start subprocesses copy the environment before function fixtures run)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DCINET_CACHE", str(tmp_path_factory.getbasetemp() / "dcinet-cache"))
        yield
