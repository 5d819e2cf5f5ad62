"""Baking an image: the builder (launched, reachable, provisioned, stopped, terminated),
the bake cache (foundation images), the image and its copies to the other regions."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from deploylib import aws, render, waits
from deploylib.catalog import step
from deploylib.context import Context, by_region
from deploylib.errors import HostError, HostKeyError, InputError, StateError
from deploylib.facts import Builder
from deploylib.plan import BUILDER

if TYPE_CHECKING:  # boto3's clients by their stubs (a test dependency)
    from mypy_boto3_ec2 import EC2Client


def image_name(ctx: Context) -> str:
    """One name per run: every region's image (and a retry's lookup) uses it."""
    return f"deploy-{ctx.state.env}-{ctx.state.version}-{ctx.state.run_id}"


def _provision_script(ctx: Context) -> str:
    env = ctx.env
    return render.provision_script(packages=list(env.os_packages), service=env.service,
                                   service_user=env.service_user, app_root=env.app_root,
                                   app_port=env.app_port)


def foundation_key(base_image: str, script: str) -> str:
    """The bake cache's key: what a foundation image is made of (the base image and the
    provision script, which names the packages and the service unit)."""
    return hashlib.sha256(f"{base_image}\n{script}".encode()).hexdigest()[:32]


def packages_key(ctx: Context, region: str, base_image: str) -> str:
    """What a bake from the base is made of, the same in every region: the base image's
    name (its id differs per region) and the provision script."""
    found = aws.ec2.images(ctx.aws.ec2(region), region, [base_image])
    name = found[0].get("Name", base_image) if found else base_image
    return foundation_key(name, _provision_script(ctx))


def network(ctx: Context, region: str) -> tuple[str, list[str]]:
    """The region's subnet id and security group ids, from the names in deploy.toml."""
    subnet_name, group, _ = ctx.env.network(region)
    ec2 = ctx.aws.ec2(region)
    subnet = aws.ec2.describe_subnet(ec2, subnet_name, region)
    return (subnet["SubnetId"],
            [aws.ec2.resolve_security_group(ec2, group, region, subnet["VpcId"])])


@step("launch-builder", undo="discard-builder", launches=BUILDER)
def launch_builder(ctx: Context) -> None:
    """Launch the builder: from the foundation image when the bake cache has one for this
    base image and package list, else from the base image."""
    if ctx.builder():
        return
    # In a region's lane (bake = "per-region") that region bakes its own, from its own
    # foundation: no region waits for a copy.
    region = ctx.region or ctx.env.primary_region
    ec2 = ctx.aws.ec2(region)
    existing = aws.ec2.find_tagged(ec2, region, {aws.TAG_RUN: ctx.state.run_id,
                                                 aws.TAG_ROLE: "builder"})
    base = aws.ec2.find_base_image(ec2, region, ctx.env.base_image, ctx.env.base_image_owner)
    key = foundation_key(base, _provision_script(ctx))
    from_live = ctx.option.get("image") == "live"
    if existing:
        iid, source = existing[0].instance_id, existing[0].image_id
    else:
        # a fold's: the image the region's live group launches, as recorded
        source = _live_image(ctx, region) if from_live else \
            _recorded_foundation(ctx, ec2, region, key) or base
        subnet, groups = network(ctx, region)
        iid = aws.ec2.launch(ec2, region=region, image_id=source, count=1,
                             instance_type=ctx.env.instance_type, subnet_id=subnet,
                             security_group_ids=groups, tag_list=ctx.tags("builder"),
                             client_token=f"{ctx.state.run_id}-builder-{region}",
                             key_name=ctx.env.key_name)[0]
    builder = Builder(region=region, instance_id=iid, base_image=base, foundation=key,
                      cache_hit=source != base and not from_live, source_image=source,
                      from_live=from_live)
    if ctx.region is not None:
        ctx.facts.builders[region] = builder
    else:
        ctx.facts.builder = builder
    ctx.save()
    ctx.log(f"  builder {iid} from {source} in {region}"
            + (" (the live image)" if from_live else
               " (foundation image: bake cache hit)" if source != base else ""))


def _live_image(ctx: Context, region: str) -> str:
    """The image `region`'s new hosts launch from, as the record names it: held to what
    any image the tool launches from is (this account's, the environment's)."""
    image = ((ctx.record() or {}).get("images") or {}).get(region)
    if not image:
        raise StateError(f"the record names no image in {region}",
                         resource=ctx.env.record_parameter,
                         fix="deploy with `--mode immutable` first")
    aws.ec2.check_own_image(ctx.aws.ec2(region), region, str(image), ctx.env.name,
                            ctx.aws.account())
    return str(image)


def _recorded_foundation(ctx: Context, ec2: EC2Client, region: str, key: str) -> str | None:
    """The foundation image a bake in `region` may start from: the one the environment's
    record names for this key (made by one of its own runs), if it is still there, this
    account's and available. Never one found by its tags: another environment's role
    could tag an image of its own so, and the builder would skip provisioning on it."""
    recorded = ((ctx.record() or {}).get("foundations") or {}).get(region) or {}
    if recorded.get("key") != key:
        return None
    found = [i for i in aws.ec2.tagged_images(ec2, region, {aws.TAG_FOUNDATION: key})
             if i["ImageId"] == recorded["image"] and i.get("State") == "available"]
    return found[0]["ImageId"] if found else None


# What the first-boot script's exit codes mean for the operator
# (deploylib/templates/first-boot.sh.j2).
FIRST_BOOT_FIXES = {
    7: "cloud-init failed on the host: read /var/log/cloud-init-output.log there (user data, "
       "package mirrors, the image)",
    8: "cloud-init did not finish in time: raise timeouts.first_boot, or read "
       "/var/log/cloud-init-output.log on the host",
}


@step("wait-ssh")
def wait_ssh(ctx: Context) -> None:
    """Wait until the stage's instances run, can be reached (SSH with a trusted host key,
    or with transport = "ssm" their SSM agent online), and have finished their first
    boot (cloud-init)."""
    for region, ids in by_region(ctx.target_refs()).items():
        aws.ec2.wait_instances(ctx.aws.ec2(region), region, ids, "running",
                               ctx.timeout("launch", 600))
    instances = ctx.targets()
    if ctx.transport == "ssh":
        ctx.on_hosts("wait-ssh", lambda inst: _wait_connects(ctx, inst), instances)
    else:
        _wait_agents(ctx, instances)
    # Reachable before first boot is over: provisioning now would meet first-boot apt
    # holding dpkg's lock, a smoke test an app whose unit is not started yet.
    boot = int(ctx.timeout("first_boot", 600))
    ctx.run_as_root(render.first_boot_script(timeout=boot), timeout=boot + 30,
                    instances=instances, fixes=FIRST_BOOT_FIXES).raise_for("wait-ssh")


def _wait_connects(ctx: Context, inst: aws.ec2.Instance) -> None:
    last: list[str] = []

    def attempt() -> bool:
        # Ask for the trusted keys on every try: on EC2 they appear in the console
        # output a while after boot, and until then nothing is trusted.
        conn = ctx.connection(inst)
        try:
            conn.open(retry=False)  # this loop is the retry, with its own deadline
            return True
        except HostKeyError as exc:
            if not conn.endpoint.trusted_keys:
                last[:] = [exc.problem]
                return False
            raise  # a key that differs from the trusted one stops the run
        except HostError as exc:
            last[:] = [exc.problem]
            return False

    waits.until(attempt, timeout=ctx.timeout("ssh", 300), what="SSH to accept connections",
                resource=f"{inst.instance_id} ({inst.address})",
                fix=lambda: "check the instance booted and the security group allows "
                "SSH from here" + (f"; last error: {last[0]}" if last else ""))


def _wait_agents(ctx: Context, instances: list[aws.ec2.Instance]) -> None:
    """Until every instance's SSM agent has registered and is online (an agent registers
    a little after boot)."""
    waiting: dict[str, str] = {}  # instance -> why not yet

    def online() -> bool:
        waiting.clear()
        waiting.update(ctx.unreachable(instances))
        return not waiting

    waits.until(online, timeout=ctx.timeout("ssh", 300),
                what="the SSM agents to come online",
                resource=" ".join(i.instance_id for i in instances),
                fix=lambda: "check the instances' SSM agent and instance role: " + ", ".join(
                    f"{i} {why}" for i, why in sorted(waiting.items())))


@step("provision")
def provision(ctx: Context) -> None:
    """Install the OS packages and the service unit (a rendered script, run once)."""
    builder = ctx.builder()
    if builder and builder.cache_hit:
        ctx.log("  the foundation image has them already: nothing to provision")
        return
    script = _provision_script(ctx)

    def one(inst: aws.ec2.Instance) -> str:
        return ctx.connection(inst).run_as_root(script,
                                                timeout=ctx.timeout("provision", 900)).output

    for out in ctx.on_hosts("provision", one).succeeded.values():
        for line in out.strip().splitlines()[-3:]:
            ctx.log(f"  {line}")


def _builder(ctx: Context) -> Builder:
    builder = ctx.builder()
    if builder is None:
        raise StateError("the run has no builder" + (f" in {ctx.region}" if ctx.region else ""),
                         resource=ctx.state.run_id, fix="run the launch-builder stage first")
    return builder


@step("cache-foundation")
def cache_foundation(ctx: Context) -> None:
    """Start a foundation image of the provisioned builder (the bake cache); not waited
    for: it becomes available while the bake goes on."""
    b = _builder(ctx)
    if b.cache_hit or b.foundation_image:
        return
    ec2 = ctx.aws.ec2(b.region)
    name = f"deploy-foundation-{b.foundation[:16]}-{ctx.state.run_id}"
    tags = [*ctx.tags("foundation"), {"Key": aws.TAG_FOUNDATION, "Value": b.foundation}]
    b.foundation_image = aws.ec2.find_image(ec2, b.region, name) or aws.ec2.create_image(
        ec2, b.region, b.instance_id, name, tags, no_reboot=True)
    ctx.save()
    ctx.log(f"  foundation image {b.foundation_image} (base {b.base_image} + packages) for "
            "later bakes")


@step("stop-builder")
def stop_builder(ctx: Context) -> None:
    """Stop the builder so its disk is consistent for the image."""
    b = _builder(ctx)
    ec2 = ctx.aws.ec2(b.region)
    if aws.ec2.describe(ec2, b.region, [b.instance_id])[0].state != "stopped":
        aws.ec2.stop(ec2, b.region, [b.instance_id])
    aws.ec2.wait_instances(ec2, b.region, [b.instance_id], "stopped", ctx.timeout("stop", 600))


@step("create-image", undo="discard-images")
def create_image(ctx: Context) -> None:
    """Create an image from the stage's hosts: the builder, or one candidate per region."""
    images = ctx.facts.images
    # One source per region: the builder, or the first candidate there.
    sources: dict[str, str] = {}
    for ref in ctx.target_refs():
        sources.setdefault(ref.region, ref.instance_id)
    no_reboot = bool(ctx.option.get("no_reboot", False))
    builder = ctx.builder() if ctx.stage is not None and ctx.stage.targets == BUILDER else None

    def one(region: str) -> str:
        ec2 = ctx.aws.ec2(region)
        name = image_name(ctx)
        image_id = images.get(region) or aws.ec2.find_image(ec2, region, name)
        if not image_id:
            source = {}
            if builder is not None and builder.from_live and builder.source_image:
                # a fold's builder: one layer over the live image it launched from
                source = aws.ec2.image_tags(ec2, region, [builder.source_image]).get(
                    builder.source_image, {})
            elif builder is None:  # a host's image: one layer over the image it launched from
                host = aws.ec2.describe(ec2, region, [sources[region]])
                if host:
                    source = aws.ec2.image_tags(ec2, region, [host[0].image_id]).get(
                        host[0].image_id, {})
            layered = builder if builder is not None and not builder.from_live else None
            image_id = aws.ec2.create_image(ec2, region, sources[region], name,
                                            image_tags(ctx, layered, source),
                                            no_reboot=no_reboot)
        aws.ec2.wait_image(ec2, region, image_id, ctx.timeout("image", 3600))
        return image_id

    ctx.per_region("create-image", sorted(sources), one, images,
                   lambda region, image: f"image {image} in {region}")


def image_tags(ctx: Context, builder: Builder | None,
               source: dict[str, str] | None = None) -> list[dict[str, str]]:
    """A release image's tags: the run's, the release's digest (every region's image
    carries the same bytes: status compares them), the image its builder started from (a
    foundation, or the base image), and its layers over that bake (`source`: the tags of
    the image a host being imaged launched from)."""
    tags = [*ctx.tags("image"), {"Key": aws.TAG_DIGEST, "Value": ctx.release.sha256}]
    if builder is not None:
        tags += [{"Key": aws.TAG_BAKED_FROM,
                  "Value": builder.source_image or builder.base_image},
                 {"Key": aws.TAG_LAYERS, "Value": "0"},
                 {"Key": aws.TAG_PACKAGES,
                  "Value": packages_key(ctx, builder.region, builder.base_image)}]
    else:
        source = source or {}
        tags.append({"Key": aws.TAG_LAYERS,
                     "Value": str(int(source.get(aws.TAG_LAYERS, "0") or 0) + 1)})
        if source.get(aws.TAG_PACKAGES):
            tags.append({"Key": aws.TAG_PACKAGES, "Value": source[aws.TAG_PACKAGES]})
    return tags


def check_layers(ctx: Context, region: str, image_id: str) -> None:
    """A rebake-light from `image_id` is refused once the image is `max_layers` images
    over its bake, or when the base image or the packages changed since that bake: what a
    bake from the base would make is no longer what the image holds."""
    ec2 = ctx.aws.ec2(region)
    tags = aws.ec2.image_tags(ec2, region, [image_id]).get(image_id, {})
    layers = int(tags.get(aws.TAG_LAYERS, "0") or 0)
    fix = "bake from the base: `invoke deploy --mode immutable`"
    if layers >= ctx.env.max_layers:
        raise InputError(f"the live image {image_id} is {layers} rebake-light layer(s) over "
                         f"its bake (max_layers = {ctx.env.max_layers})",
                         resource=f"image {image_id} in {region}", fix=fix)
    packages = tags.get(aws.TAG_PACKAGES)
    if packages:
        base = aws.ec2.find_base_image(ec2, region, ctx.env.base_image,
                                       ctx.env.base_image_owner)
        if packages != packages_key(ctx, region, base):
            raise InputError(f"the base image or the packages changed since {image_id} was "
                             "baked", resource=f"image {image_id} in {region}", fix=fix)


@step("terminate-builder")
def terminate_builder(ctx: Context) -> None:
    """Terminate the builder once its image exists."""
    b = _builder(ctx)
    aws.ec2.terminate(ctx.aws.ec2(b.region), b.region, [b.instance_id])
    b.terminated = True
    ctx.save()


@step("copy-image", undo="discard-images")
def copy_image(ctx: Context) -> None:
    """Start copying the image to every other region, all at once. Nothing waits for the
    copies here: each region waits for its own (wait-image), so the primary region is
    tested and promoted while the copies are on their way."""
    env = ctx.env
    images = ctx.facts.images
    source = images[env.primary_region]
    name = image_name(ctx)
    tags = image_tags(ctx, ctx.facts.builder)  # a copy says what its source was baked from

    def one(region: str) -> str:
        ec2 = ctx.aws.ec2(region)
        return images.get(region) or aws.ec2.find_image(ec2, region, name) or \
            aws.ec2.copy_image(ec2, source_region=env.primary_region, dest_region=region,
                               image_id=source, name=name, tag_list=tags,
                               client_token=f"{ctx.state.run_id}-{region}")

    ctx.per_region("copy-image", env.copy_regions, one, images,
                   lambda region, image: f"copying to {region} as {image}")


@step("wait-image")
def wait_image(ctx: Context) -> None:
    """Wait until the run's image is available in the region (a copy can take longer
    than everything else in the run)."""
    images = ctx.facts.images

    def one(region: str) -> str:
        ec2 = ctx.aws.ec2(region)
        what = "image" if region == ctx.env.primary_region else "copy"
        aws.ec2.wait_image(ec2, region, images[region], ctx.timeout(what, 7200))
        return images[region]

    ctx.per_region("wait-image", ctx.regions(sorted(images)), one, {},
                   lambda region, image: f"image {image} available in {region}")
