import pytest

from myca_ops.lab.scenario import container


@pytest.fixture(scope="session")
def lab_host():
    return container("myca-docker-host")


@pytest.fixture(scope="session")
def moshi():
    return container("moshi")
