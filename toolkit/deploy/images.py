"""The maintained tables: SageMaker's Triton images per region and version, and the instance types Triton runs on.

Why tables and not a lookup: the image URI is needed by ``deploy plan``, which must not call AWS to compute what it
would do, and SageMaker offers no API that lists its framework images. The registry accounts are those AWS publishes
for ``sagemaker-tritonserver`` (the SageMaker Python SDK's ``image_uri_config/sagemaker-tritonserver.json`` carries
the same data); update ``TRITON_TAGS`` and ``REGISTRIES`` together when AWS publishes a new tag.

``NGC_TAG`` is the NGC container whose Triton matches the embedded one the tests validate configs against
(``tritonserver`` 2.51.0 in ``nvidia-pytriton`` 0.7.0); ``docs/deploy.md`` uses it in the ``docker run`` line.
"""

from __future__ import annotations

from toolkit.deploy.errors import DeployError

# sagemaker-tritonserver tags -> the Triton server version inside (NGC release notes: YY.MM -> 2.x.0).
TRITON_TAGS: dict[str, str] = {"24.09": "2.50.0", "24.05": "2.46.0", "24.03": "2.44.0", "24.01": "2.42.0"}
DEFAULT_TRITON_TAG = "24.09"
NGC_TAG = "24.10"  # Triton 2.51.0, the version of the embedded tritonserver the generated configs are tested on
NGC_IMAGE = f"nvcr.io/nvidia/tritonserver:{NGC_TAG}-py3"

_DLC = "763104351884"
REGISTRIES: dict[str, str] = {
    "af-south-1": "626614931356",
    "ap-east-1": "871362719292",
    "ap-northeast-1": _DLC,
    "ap-northeast-2": _DLC,
    "ap-northeast-3": "364406365360",
    "ap-south-1": _DLC,
    "ap-southeast-1": _DLC,
    "ap-southeast-2": _DLC,
    "ap-southeast-3": "907027046896",
    "ca-central-1": _DLC,
    "ca-west-1": "204538143572",
    "cn-north-1": "727897471807",
    "cn-northwest-1": "727897471807",
    "eu-central-1": _DLC,
    "eu-north-1": _DLC,
    "eu-south-1": "692866216735",
    "eu-west-1": _DLC,
    "eu-west-2": _DLC,
    "eu-west-3": _DLC,
    "il-central-1": "780543022126",
    "me-south-1": "217643126080",
    "sa-east-1": _DLC,
    "us-east-1": _DLC,
    "us-east-2": _DLC,
    "us-west-1": _DLC,
    "us-west-2": _DLC,
}

# Instance families SageMaker hosts real-time endpoints on, and whether they carry NVIDIA GPUs. Inferentia/Trainium
# (inf*, trn*) are absent on purpose: Triton's SageMaker image needs a CPU or an NVIDIA GPU.
CPU_FAMILIES = frozenset(
    [
        "t2",
        "t3",
        "m4",
        "m5",
        "m5d",
        "m6i",
        "m6id",
        "m7i",
        "c4",
        "c5",
        "c5d",
        "c6i",
        "c6id",
        "c7i",
        "r5",
        "r5d",
        "r6i",
        "r6id",
        "r7i",
    ]
)
GPU_FAMILIES = frozenset(["p2", "p3", "p4d", "p4de", "p5", "g4dn", "g5", "g6", "g6e"])
SIZES = frozenset(
    {"medium", "large", "xlarge", "2xlarge", "4xlarge", "8xlarge", "9xlarge", "10xlarge", "12xlarge", "16xlarge"}
    | {"18xlarge", "24xlarge", "32xlarge", "48xlarge"}
)


def check_region(region: str, image_given: bool) -> str:
    """A region SageMaker's Triton image exists in (any region botocore knows, when ``--image`` is given)."""
    if region in REGISTRIES:
        return region
    if image_given:
        import boto3

        if region in boto3.session.Session().get_available_regions("sagemaker"):
            return region
    raise DeployError(
        f"unknown region {region!r}: sagemaker-tritonserver is published in {', '.join(sorted(REGISTRIES))}"
    )


def is_gpu(instance_type: str) -> bool:
    return check_instance_type(instance_type) in GPU_FAMILIES


def check_instance_type(instance_type: str) -> str:
    """The family of a known hosting instance type; a one-line error otherwise."""
    parts = instance_type.split(".")
    if len(parts) == 3 and parts[0] == "ml" and parts[2] in SIZES:
        family = parts[1]
        if family in CPU_FAMILIES or family in GPU_FAMILIES:
            return family
        if family.startswith(("inf", "trn")):
            raise DeployError(f"bad instance type {instance_type!r}: Triton's SageMaker image needs CPU or NVIDIA GPU")
    raise DeployError(
        f"bad instance type {instance_type!r}: not a SageMaker hosting instance type this tool knows "
        f"(families: {', '.join(sorted(CPU_FAMILIES | GPU_FAMILIES))})"
    )


def image_uri(region: str, tag: str | None = None) -> str:
    """``<account>.dkr.ecr.<region>.amazonaws.com[.cn]/sagemaker-tritonserver:<tag>-py3``."""
    tag = tag or DEFAULT_TRITON_TAG
    if tag not in TRITON_TAGS:
        raise DeployError(f"unknown triton_version {tag!r}: known sagemaker-tritonserver tags {', '.join(TRITON_TAGS)}")
    check_region(region, image_given=False)
    domain = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"{REGISTRIES[region]}.dkr.ecr.{region}.{domain}/sagemaker-tritonserver:{tag}-py3"
