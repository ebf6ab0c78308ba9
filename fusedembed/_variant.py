"""What a build of fusedembed requires and is called, from the torch it is built against.

setup.py loads this file by path (importing the package would load the extension it is about to
build), and ``_extension.py`` uses it to name the variant that fits the installed torch. So it
imports nothing but the standard library.
"""

import re

# What a source distribution asks for: it compiles against whatever torch it finds.
TORCH_RANGE = "torch>=2.4"
RUNTIME = ["torchvision", "numpy", "pluggy>=1.3", "pyyaml", "tqdm", "safetensors"]
# A CUDA variant refuses a CPU build of torch (local label +cpu), so that pip, choosing between
# variants in one index, cannot take it next to that torch. PEP 440 has no wildcard over local
# labels: the refusal names each patch release, more than any torch minor has had.
CPU_PATCHES = 10


def torch_minor(torch_version: str) -> str:
    """'2.14.1+cu130' -> '2.14'."""
    match = re.match(r"(\d+)\.(\d+)", torch_version)
    if match is None:
        raise ValueError(f"torch_version: expected a version like '2.14.1', got {torch_version!r}")
    return f"{match.group(1)}.{match.group(2)}"


def cuda_major(cuda_version: str) -> str:
    """'13.0' -> '13'."""
    if not re.fullmatch(r"\d+\.\d+(\.\d+)?", cuda_version):
        raise ValueError(f"cuda_version: expected a version like '13.0', got {cuda_version!r}")
    return cuda_version.split(".")[0]


def local_tag(torch_version: str, cuda_version: str | None) -> str:
    """The variant's local version label: 'pt214cpu' for CPU kernels, 'pt214cu130' with CUDA 13.0
    kernels (cuda_version is the CUDA the *kernels* were compiled with, None for a CPU build)."""
    pt = "pt" + torch_minor(torch_version).replace(".", "")
    if cuda_version is None:
        return pt + "cpu"
    cuda_major(cuda_version)  # validates it
    return pt + "cu" + "".join(cuda_version.split(".")[:2])


def requirements(torch_version: str | None, cuda_version: str | None) -> list:
    """Requires-Dist of a build: None for torch_version means a source distribution (the loose
    range); a wheel pins the torch minor it was compiled against (its C++ ABI binds the extension
    to it) and, with CUDA kernels, a CUDA build of it and the CUDA runtime major they link."""
    if torch_version is None:
        return [TORCH_RANGE, *RUNTIME]
    minor = torch_minor(torch_version)
    if cuda_version is None:
        return [f"torch=={minor}.*", *RUNTIME]
    return [",".join([f"torch=={minor}.*", *(f"!={minor}.{patch}+cpu" for patch in range(CPU_PATCHES))]),
            f'cuda-toolkit[cudart]=={cuda_major(cuda_version)}.*; platform_system == "Linux"', *RUNTIME]
