"""What a server group's instance installs at boot (templates/boot.sh.j2 runs this on the
instance, with the instance's Python: cloud-init's).

    python3 boot_record.py REGION GROUP SHAPES OWN_VERSION OWN_SHA256 OWN_VERSION_ID

stdin: SSM's GetParameter answer for the environment's record (or its ParameterNotFound);
the record JSON, or packed (deploylib.aws.ssm.pack).
Prints "VERSION SHA256 VERSION_ID": the record's release when the record names GROUP live
in REGION, else the group's own (OWN_*, "-" for no version id). SHAPES is the tool's own
definition of each value's shape (deploylib.facts.RECORD_SHAPES, as JSON): a value read
back from the record is held to it as the tool holds it, since whoever can write the
parameter could otherwise steer the path and URL the boot builds from it. Exit 10, with
one line naming the value, for a record that is not JSON or holds a value of another
shape.
"""

import base64
import json
import re
import sys
import zlib

# A record too long for JSON in a standard parameter is packed (deploylib.aws.ssm.pack):
# this prefix, then the JSON deflated, in base64. No record inflates past a megabyte.
PACKED = "zlib+b64:"
INFLATED_LIMIT = 1 << 20


def unpack(value: str) -> dict:
    text: str | bytes = value
    if value.startswith(PACKED):
        inflate = zlib.decompressobj()
        text = inflate.decompress(base64.b64decode(value[len(PACKED):], validate=True),
                                  INFLATED_LIMIT)
        if inflate.unconsumed_tail:
            raise ValueError("inflates past a megabyte")
    record = json.loads(text)
    if not isinstance(record, dict):
        raise TypeError("not an object")
    return record


def main(argv: list[str]) -> int:
    region, group, shapes = argv[1], argv[2], json.loads(argv[3])
    own = argv[4:7]
    try:
        answer = json.load(sys.stdin)
        record = unpack(answer["Parameter"]["Value"]) if "Parameter" in answer else {}
        live = (record.get("server_groups") or {}).get(region) == group
    except (ValueError, KeyError, TypeError, AttributeError, zlib.error) as exc:
        print(f"[boot {group}] the record is not the tool's ({type(exc).__name__}): refused",
              file=sys.stderr)
        return 10
    if not live:  # no record yet, or another group live: this group's own release
        print(*own)
        return 0
    wanted = {"release": record.get("release"), "sha256": record.get("sha256"),
              "version_id": record.get("version_id") or "-"}
    for key, value in wanted.items():
        if key == "version_id" and value == "-":
            continue
        if not isinstance(value, str) or not re.fullmatch(shapes[key], value):
            print(f"[boot {group}] the record's {key} {value!r:.80} is not a valid {key}: "
                  "refused", file=sys.stderr)
            return 10
    print(wanted["release"], wanted["sha256"], wanted["version_id"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
