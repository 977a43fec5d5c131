"""The one-device run of the DAS job (das_job.py), which the mesh run of every mesh in
test_sharded.py and the 2-process run of test_multihost.py are compared with: made once per
test process, read only."""
import jax
import pytest

from das_job import das_config, run_on


@pytest.fixture(scope="session")
def one_device(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        return run_on(das_config({"data": 1}), tmp_path_factory.mktemp("one"), mp,
                      jax.devices()[:1])
