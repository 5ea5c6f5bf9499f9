# Muster's cloud-init config module: the `muster:` key in user-data, as cloud-init has
# `puppet:`, `chef:` and `salt_minion:`. Shipped in the muster package
# (/usr/share/muster/cloud-init/cc_muster.py), which links it where cloud-init's Python finds
# it and adds `muster` to cloud_final_modules (/etc/cloud/cloud.cfg.d/90_muster.cfg).
#
#   #cloud-config
#   muster:
#     coordinator_host: coordinator-1.example.net:12443
#     roles_token: "…"            # or roles_token_file: /path
#     roles: [allocator]
#     availability_zone: zone-2
#     install: package            # or one-liner (with pin: the sha256//… the coordinator prints)
#
# Runs once per instance. The token goes to `muster install` in its environment, never in an
# argument list or a log line; a refusal fails the module with muster's error code.
"""Muster: enroll this instance into a Muster platform."""

import json
import os
import subprocess

from cloudinit.settings import PER_INSTANCE

MODULE_DESCRIPTION = """\
Enrolls this instance into a Muster platform with ``muster install``: checks the roles token,
pins the coordinator, keeps the keys on the host, writes certificates and config, registers
its roles. ``install: package`` uses the muster package of the image (installed or upgraded
from the image's repositories); ``install: one-liner`` fetches the coordinator's installer over
TLS pinned to ``pin``. Runs once per instance; a refused token fails the module with muster's
error code (docs/installer.md).
"""

meta = {
    "id": "cc_muster",
    "name": "Muster",
    "title": "Enroll this instance into a Muster platform",
    "description": MODULE_DESCRIPTION,
    "distros": ["all"],
    "examples": [
        "muster:\n"
        "  coordinator_host: coordinator-1.example.net:12443\n"
        "  roles_token: ROLES-TOKEN\n"
        "  roles: [allocator]\n"
        "  availability_zone: zone-2\n",
        "muster:\n"
        "  coordinator_host: coordinator-1.example.net:12443\n"
        "  roles_token_file: /run/muster/token\n"
        "  roles: allocator,proxy\n"
        "  install: one-liner\n"
        "  pin: sha256//COORDINATOR-KEY-PIN\n",
    ],
    "frequency": PER_INSTANCE,
    "activate_by_schema_keys": ["muster"],
}

__doc__ = MODULE_DESCRIPTION

# key: (types, what it is)
KEYS = {
    "coordinator_host": ((str,), "HOST[:PORT] of a coordinator"),
    "roles_token": ((str,), "the roles token"),
    "roles_token_file": ((str,), "a file holding the roles token"),
    "roles": ((str, list), "roles, as a list or comma-separated"),
    "availability_zone": ((str,), "the zone"),
    "install": ((str,), "package or one-liner"),
    "pin": ((str,), "the coordinator's key pin, sha256//…"),
    "package": ((str,), "the package name (default muster)"),
    "timeout": ((str,), "how long muster install may retry (5m, 1h)"),
}


ENROLLMENT = "/var/lib/muster/enrollment.json"
# The instance the enrollment on this host was made for, kept with cloud-init's own data.
INSTANCE_FILE = "/var/lib/cloud/data/muster-instance"


class MusterConfigError(ValueError):
    """The `muster:` key does not read; the message names each problem."""


def check(cfg):
    """The `muster:` key, checked: unknown keys and wrong types named, all at once."""
    if not isinstance(cfg, dict):
        raise MusterConfigError(
            "muster: must be a mapping of keys, not %s" % type(cfg).__name__
        )
    problems = []
    for key in sorted(cfg):
        if key not in KEYS:
            problems.append(
                "unknown key %r (keys: %s)" % (key, ", ".join(sorted(KEYS)))
            )
            continue
        types, what = KEYS[key]
        value = cfg[key]
        if not isinstance(value, types) or isinstance(value, bool):
            problems.append(
                "%s must be %s, not %s" % (key, what, type(value).__name__)
            )
    roles = cfg.get("roles")
    if isinstance(roles, list) and not all(isinstance(r, str) for r in roles):
        problems.append("roles must be a list of role names")
    if "coordinator_host" not in cfg:
        problems.append("coordinator_host is missing")
    if ("roles_token" in cfg) == ("roles_token_file" in cfg):
        problems.append("give one of roles_token and roles_token_file")
    how = cfg.get("install", "package")
    if how not in ("package", "one-liner"):
        problems.append("install must be package or one-liner, not %r" % (how,))
    if how == "one-liner" and "pin" not in cfg:
        problems.append(
            "install: one-liner needs pin (the sha256//… in the line musterd prints)"
        )
    if problems:
        raise MusterConfigError("muster: " + "; ".join(problems))
    return cfg


def install_arguments(cfg):
    """`muster install` options from the config (never the token itself)."""
    args = ["--coordinator-host", cfg["coordinator_host"], "--output", "json"]
    roles = cfg.get("roles")
    if roles:
        args += ["--roles", ",".join(roles) if isinstance(roles, list) else roles]
    if cfg.get("availability_zone"):
        args += ["--availability-zone", cfg["availability_zone"]]
    if cfg.get("roles_token_file"):
        args += ["--roles-token-file", cfg["roles_token_file"]]
    if cfg.get("timeout"):
        args += ["--timeout", cfg["timeout"]]
    return args


def outcome(proc):
    """What `muster install --output json` said: the enrollment, or the refusal's code."""
    last = None
    for line in proc.stdout.decode("utf-8", "replace").splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                last = json.loads(line)
            except ValueError:
                pass
    return last or {}


def handle(name, cfg, cloud, *rest):
    """cloud-init's entry point (22.4 passes a logger and args; later ones only args)."""
    import logging

    log = logging.getLogger("cloudinit.config.cc_muster")
    if "muster" not in cfg:
        log.debug("Skipping module named %s, no 'muster' key in configuration", name)
        return
    conf = check(cfg["muster"])
    env = dict(os.environ)
    env.pop("MUSTER_ROLES_TOKEN", None)
    if "roles_token" in conf:
        env["MUSTER_ROLES_TOKEN"] = conf["roles_token"]
    args = install_arguments(conf)
    # An enrolled host whose enrollment came with another instance (an image cloned to a new
    # machine, or made from an enrolled one) enrolls anew as its own host.
    instance = cloud.get_instance_id()
    if os.path.exists(ENROLLMENT):
        kept = None
        if os.path.exists(INSTANCE_FILE):
            with open(INSTANCE_FILE) as f:
                kept = f.read().strip()
        if kept != instance:
            log.info("muster: enrolled for another instance (%s); enrolling this one anew", kept)
            args.append("--force")

    if conf.get("install", "package") == "package":
        package = conf.get("package", "muster")
        log.info("muster: installing the %s package", package)
        cloud.distro.install_packages([package])
        proc = subprocess.run(
            ["muster", "install"] + args,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            check=False,
        )
    else:
        url = "https://%s/install.sh" % conf["coordinator_host"]
        log.info("muster: fetching the installer from %s, pinned", url)
        script = subprocess.run(
            ["curl", "-fsSk", "--pinnedpubkey", conf["pin"], url],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            check=False,
        )
        if script.returncode != 0 or not script.stdout:
            raise RuntimeError(
                "muster: fetching %s failed (curl exit %d: %s); a pin mismatch is exit 90"
                % (url, script.returncode, script.stderr.decode("utf-8", "replace").strip())
            )
        proc = subprocess.run(
            ["sh", "-s", "--"] + args,
            input=script.stdout,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            check=False,
        )
    for line in proc.stderr.decode("utf-8", "replace").splitlines():
        log.info("%s", line)
    said = outcome(proc)
    if proc.returncode != 0:
        # muster's JSON on a refusal: {"result": "error", "error": EXIT_NAME, "code": API_CODE,
        # "message": …}; the API's code when the coordinator refused, else the exit's name.
        code = said.get("code") or said.get("error") or "exit %d" % proc.returncode
        message = said.get("message") or "see the lines above"
        raise RuntimeError(
            "muster install refused (%s, exit %d): %s" % (code, proc.returncode, message)
        )
    os.makedirs(os.path.dirname(INSTANCE_FILE), exist_ok=True)
    with open(INSTANCE_FILE, "w") as f:
        f.write(instance + "\n")
    log.info(
        "muster: enrolled as %s, roles %s",
        said.get("node_id"),
        ",".join(said.get("roles") or []),
    )
