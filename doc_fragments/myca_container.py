# The option shared by the modules that run myca_ops in the service's interpreter.


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  container:
    description:
      - Run in this container of the host's Docker engine (the moshi role's O(moshi_runtime=docker)), through the
        engine's API; O(python) is then the image's interpreter. The host needs no venv and no docker command.
    type: str
"""
