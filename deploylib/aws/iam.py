"""IAM: what a server group needs of the account before its first launch — Auto Scaling's
service-linked role and the instances' profile. The tool only reads them."""

from __future__ import annotations

from typing import Any

from deploylib.aws import calling
from deploylib.errors import CloudError

# Auto Scaling launches and terminates a group's instances as this role; an account
# that never had a group has none, and the first CreateAutoScalingGroup makes it only
# for a caller allowed iam:CreateServiceLinkedRole.
AUTOSCALING_SERVICE = "autoscaling.amazonaws.com"
AUTOSCALING_ROLE = "AWSServiceRoleForAutoScaling"
CREATE_AUTOSCALING_ROLE = ("aws iam create-service-linked-role --aws-service-name "
                           f"{AUTOSCALING_SERVICE}")


def autoscaling_role_arn(account: str) -> str:
    return f"arn:aws:iam::{account}:role/aws-service-role/{AUTOSCALING_SERVICE}/{AUTOSCALING_ROLE}"


def _missing(fn: Any) -> dict[str, Any] | None:
    """What an IAM Get answers, or None when IAM has no such entity."""
    try:
        return dict(fn())
    except CloudError as exc:
        if exc.code == "NoSuchEntity":
            return None
        raise


def autoscaling_role(iam: Any) -> dict[str, Any] | None:
    """Auto Scaling's service-linked role (GetRole's Role), or None when the account has
    none yet."""
    def get() -> Any:
        with calling(f"IAM role {AUTOSCALING_ROLE}",
                     "grant iam:GetRole on it (`invoke policy`)"):
            return iam.get_role(RoleName=AUTOSCALING_ROLE)["Role"]
    return _missing(get)


def instance_profile(iam: Any, name: str) -> dict[str, Any] | None:
    """An instance profile (GetInstanceProfile's), by its name or ARN; None when there is
    none."""
    name = name.rsplit("/", 1)[-1]

    def get() -> Any:
        with calling(f"instance profile {name}",
                     "grant iam:GetInstanceProfile on it (`invoke policy`)"):
            return iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]
    return _missing(get)
