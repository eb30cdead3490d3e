import pytest

from myca_ops.lab.scenario import container


@pytest.fixture(scope="session")
def pod():
    return container("myca-nosd-pod")
