"""The step library: one function per step, shared by all three procedures.

    steps.release    publish-release, locate-previous, install-release
    steps.bake       launch-builder, wait-ssh, provision, cache-foundation, stop-builder,
                     create-image, terminate-builder, copy-image, wait-image
    steps.fleet      launch-candidates, smoke-test, promote, record, retire
    steps.rollout    select-hosts, drain, health-check, put-back, catch-up, locate-live,
                     notify
    steps.verify     verify (the verification window: in-place batches, a release once live)
    steps.fold       locate-release, fold-template, record-images (`invoke fold`)
    steps.cleanup    restore-batch, demote, discard-candidates, discard-images,
                     discard-builder, restore-templates, resume-scaling (run when a run
                     fails, never as planned stages: each the undo a making step declares)

A step reads what earlier stages produced from the run state (`ctx.facts`), does its
work through the system modules, and writes what it produced back. Running a finished
step again changes nothing: each one first looks for what it would create. Importing
this package registers every step in the catalog; each is importable from here, which
is the path `invoke plan` shows for it.
"""

from deploylib.steps.bake import (
    cache_foundation,
    copy_image,
    create_image,
    launch_builder,
    provision,
    stop_builder,
    terminate_builder,
    wait_image,
    wait_ssh,
)
from deploylib.steps.cleanup import (
    demote,
    discard_builder,
    discard_candidates,
    discard_images,
    restore_batch,
    restore_templates,
    resume_scaling,
)
from deploylib.steps.fleet import launch_candidates, promote, record, retire, smoke_test
from deploylib.steps.fold import fold_template, locate_release, record_images
from deploylib.steps.release import install_release, locate_previous, publish_release
from deploylib.steps.rollout import (
    catch_up,
    drain,
    health_check,
    locate_live,
    notify,
    put_back,
    select_hosts,
)
from deploylib.steps.verify import verify

__all__ = [
    "cache_foundation", "catch_up", "copy_image", "create_image", "demote",
    "discard_builder", "discard_candidates", "discard_images", "drain", "fold_template",
    "health_check", "install_release", "launch_builder", "launch_candidates", "locate_live",
    "locate_previous", "locate_release", "notify", "promote", "provision",
    "publish_release", "put_back", "record", "record_images", "restore_batch",
    "restore_templates", "resume_scaling", "retire",
    "select_hosts", "smoke_test", "stop_builder", "terminate_builder", "wait_image",
    "verify", "wait_ssh",
]
