"""The lab's Parameter Store: moto's SSM, held to AWS's size limits for a value.

"Standard parameters: 4 KB; advanced parameters: 8 KB" (Systems Manager user guide,
"Managing parameter tiers"): PutParameter with a longer value is refused with AWS's own
words; Intelligent-Tiering makes a parameter advanced only when its value needs it. moto
stores a value of any length, so a record that would break on AWS would pass in the lab.
"""

from __future__ import annotations

from typing import Any

from moto.ssm.exceptions import ValidationException
from moto.ssm.models import SimpleSystemManagerBackend

LIMITS = {"Standard": 4096, "Advanced": 8192}
_GUIDE = ("https://docs.aws.amazon.com/systems-manager/latest/userguide/"
          "parameter-store-advanced-parameters.html")


def refusal(value: str, tier: str) -> str | None:
    """AWS's words for a value too long for its tier; None when it fits."""
    size = len(value.encode("utf-8"))
    if tier == "Intelligent-Tiering":
        tier = "Standard" if size <= LIMITS["Standard"] else "Advanced"
    if size <= LIMITS.get(tier, LIMITS["Standard"]):
        return None
    if tier == "Advanced":
        return (f"Advanced tier parameters support a maximum parameter value of "
                f"{LIMITS['Advanced']} characters. For more information, see {_GUIDE}")
    return (f"Standard tier parameters support a maximum parameter value of "
            f"{LIMITS['Standard']} characters. To create a larger parameter value, upgrade "
            f"the parameter to use the advanced-parameter tier. For more information, see "
            f"{_GUIDE}")


def install() -> None:
    original = SimpleSystemManagerBackend.put_parameter

    def put_parameter(self: SimpleSystemManagerBackend, name: str, description: str,
                      value: str, parameter_type: str, allowed_pattern: str, keyid: str,
                      overwrite: bool, tags: Any, data_type: str, tier: str | None,
                      policies: str | None) -> Any:
        # The tier a write keeps: the one it asks for, else the parameter's own, else the
        # account's default (Standard).
        held = self._parameters.get(name)
        kept = tier or (held[-1].tier if held else None) or self.default_parameter_tier
        why = refusal(value or "", kept)
        if why:
            raise ValidationException(why)
        return original(self, name, description, value, parameter_type, allowed_pattern,
                        keyid, overwrite, tags, data_type, tier, policies)

    SimpleSystemManagerBackend.put_parameter = put_parameter
