#!/usr/bin/env python3
"""Checks the Packer template and the Terraform example against the code.

`packer validate` and `terraform validate` cannot run where the tests run
(no plugins and no providers can be fetched), so this parses the HCL with
python-hcl2 (tests/setup.sh installs it) and checks that every name the
files use is the one the code and the docs use:

* every `berth:*` tag named in packaging/, docs/aws-setup.md is a constant
  of src/tags.rs (or `berth:version:<component>`);
* every IAM action named in the Terraform and the doc is in
  docs/iam-policy.json, which Terraform loads with file(), never copies;
* the launch template: IMDSv2 required, hop limit 1, instance-metadata tags
  enabled; the instance profile carries the policy;
* the group: the tags the policy's conditions require, berth:version, both
  lifecycle hooks with the transitions of src/tags.rs and sensible
  timeouts, no berth:* tag propagated, every instance tag key allowed by
  the instance-metadata-tags rule; an NLB target group attached;
* Packer: an amazon-ebs source; the manifest, binary, data directory and
  unit are the ones of src/manifest.rs and systemd/; the manifest is
  validated, the unit enabled and the data directory emptied last.

`--self-test` breaks the inputs in memory, one way at a time (a renamed tag,
a changed constant, hop limit 2, a copied policy, ...), and fails unless the
checks catch every one.

Exit status 0 when everything agrees; otherwise each problem is printed,
naming its file.
"""

import copy
import glob
import os
import posixpath
import re
import sys
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TF_DIR = "packaging/terraform"
PACKER_DIR = "packaging/packer"
POLICY = "docs/iam-policy.json"
DOC = "docs/aws-setup.md"
EXAMPLE_MANIFEST = f"{PACKER_DIR}/berth.toml"

# Instance-metadata tags on: instance tag keys may only use letters, digits
# and + - = . , _ : @ (no spaces, no "/"), and may not be ".", ".." or
# "_index". Launches with any other key fail.
INSTANCE_TAG_KEY = re.compile(r"[A-Za-z0-9+\-=.,_:@]{1,128}")
INSTANCE_TAG_KEY_FORBIDDEN = {".", "..", "_index"}
KEY_RULE_TEXT = "+ - = . , _ : @"

BERTH_TAG = re.compile(r"berth:[A-Za-z0-9_.<>-]+(?::[A-Za-z0-9_.<>-]*)*")
# service:Action (an IAM action or condition key), not part of a longer name.
IAM_NAME = re.compile(r"(?<![\w:/.-])([a-z][a-z0-9-]*):([A-Z][a-z][A-Za-z]*)\b")
# The trust policy's action: the only one Terraform may name that is not berth's.
TRUST_ACTION = "sts:AssumeRole"
# Absolute paths with "berth" in them (not the tail of a relative path or
# of an interpolation like ${path.root}/berth.toml).
BERTH_PATH = re.compile(r"(?<![\w.}\-])/(?:[\w.@-]+/)*[\w.@-]*berth[\w.@-]*(?:/[\w.@-]+)*")
UNIT_NAME = re.compile(r"[\w@.-]*berth[\w@.-]*\.service\b")


def key_ok(k):
    return bool(INSTANCE_TAG_KEY.fullmatch(k)) and k not in INSTANCE_TAG_KEY_FORBIDDEN


# ---- inputs -----------------------------------------------------------------


def load_files(root):
    """Every file the checks read, by path relative to the repository."""
    paths = ["src/tags.rs", "src/manifest.rs", POLICY, DOC, EXAMPLE_MANIFEST]
    for pattern in ("systemd/*.service", f"{TF_DIR}/*.tf", f"{PACKER_DIR}/*.pkr.hcl"):
        paths += sorted(
            os.path.relpath(p, root) for p in glob.glob(os.path.join(root, pattern))
        )
    files = {}
    for p in paths:
        try:
            with open(os.path.join(root, p), encoding="utf-8") as f:
                files[p] = f.read()
        except FileNotFoundError:
            pass
    return files


_PARSED = {}


def parse_hcl(text):
    """The parsed HCL (cached: the self-test parses the same text often)."""
    if text not in _PARSED:
        _PARSED[text] = _parse_hcl(text)
    return copy.deepcopy(_PARSED[text])


def _parse_hcl(text):
    import hcl2
    from hcl2.utils import SerializationOptions

    opts = SerializationOptions(
        with_comments=False, explicit_blocks=False, strip_string_quotes=True
    )
    return hcl2.loads(text, serialization_options=opts)


def strings(node):
    """Every string (keys included) in a parsed HCL tree."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield k
            yield from strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)
    elif isinstance(node, str):
        yield node


def blocks(node, name):
    """The blocks `name { ... }` directly in a body (a list of bodies)."""
    v = node.get(name, []) if isinstance(node, dict) else []
    return v if isinstance(v, list) else [v]


def ref(value, kind):
    """`aws_x.NAME` in an expression like `${aws_x.NAME.arn}`, or None."""
    m = re.search(re.escape(kind) + r"\.([\w-]+)", value) if isinstance(value, str) else None
    return m.group(1) if m else None


class Checks:
    def __init__(self, files):
        self.files = files
        self.errors = []
        self.passed = 0

    def check(self, ok, where, message):
        if ok:
            self.passed += 1
        else:
            self.errors.append(f"{where}: {message}")
        return ok

    # ---- what the code says -------------------------------------------------

    def code(self):
        f = self.files
        consts = dict(re.findall(r'pub const (\w+): &str = "([^"]*)";', f.get("src/tags.rs", "")))
        self.consts = consts
        tags = {v for v in consts.values() if v.startswith("berth:")}
        self.tag_prefixes = {t for t in tags if t.endswith(":")}
        self.tags = tags - self.tag_prefixes
        for c in ("TAG_CLUSTER", "TAG_VERSION", "LAUNCHING", "TERMINATING"):
            self.check(c in consts, "src/tags.rs", f"constant {c} not found")
        m = f.get("src/manifest.rs", "")
        paths = dict(re.findall(r'pub const (DEFAULT_\w+): &str = "([^"]*)";', m))
        self.manifest_path = paths.get("DEFAULT_MANIFEST_PATH")
        self.data_dir = paths.get("DEFAULT_DATA_DIR")
        self.check(self.manifest_path, "src/manifest.rs", "DEFAULT_MANIFEST_PATH not found")
        self.check(self.data_dir, "src/manifest.rs", "DEFAULT_DATA_DIR not found")
        lt = re.search(r"launch_timeout: Dur\(Duration::from_secs\(([\d\s*]+)\)\)", m)
        self.launch_timeout = eval_product(lt.group(1)) if lt else None
        self.check(lt, "src/manifest.rs", "default launch_timeout not found")

        units = [p for p in f if p.startswith("systemd/") and p.endswith(".service")]
        self.check(len(units) == 1, "systemd/", f"expected one unit file, found {units}")
        self.unit = posixpath.basename(units[0]) if units else None
        unit = f[units[0]] if units else ""
        start = re.search(r"^ExecStart=(\S+)", unit, re.M)
        self.binary = start.group(1) if start else None
        self.check(self.binary, units[0] if units else "systemd/", "no ExecStart=")
        for line in re.findall(r"^ExecStart(?:Pre)?=.*$", unit, re.M):
            self.check(
                f"--config {self.manifest_path}" in line,
                units[0],
                f"{line!r} does not read {self.manifest_path} (DEFAULT_MANIFEST_PATH)",
            )

        import json

        try:
            self.policy = json.loads(f.get(POLICY, ""))
        except ValueError as e:
            self.policy = {}
            self.check(False, POLICY, f"does not parse: {e}")
        self.policy_actions = set()
        self.required_group_tags = set()
        self.agent_tag_keys = set()
        for st in self.policy.get("Statement", []):
            actions = st.get("Action", [])
            self.policy_actions |= set([actions] if isinstance(actions, str) else actions)
            for op, cond in st.get("Condition", {}).items():
                for key, value in cond.items():
                    tag = re.fullmatch(r"autoscaling:ResourceTag/(.+)", key)
                    if op == "Null" and tag and value == "false":
                        self.required_group_tags.add(tag.group(1))
                    if key == "aws:TagKeys":
                        self.agent_tag_keys |= set(value)
        self.iam_names = {":".join(m) for m in IAM_NAME.findall(f.get(POLICY, ""))}
        for k in sorted(self.agent_tag_keys):
            known = k in self.tags or (k.endswith("*") and k[:-1] in self.tag_prefixes)
            self.check(known, POLICY, f"the agent may tag {k!r}, which is not in src/tags.rs")

    # ---- names anywhere ---------------------------------------------------------

    def tag_ok(self, t):
        if t in self.tags:
            return True
        return any(
            t.startswith(p) and re.fullmatch(r"<[\w-]+>|[a-z0-9][a-z0-9_-]*", t[len(p):])
            for p in self.tag_prefixes
        )

    def names(self):
        for path, text in self.files.items():
            if not (path.startswith("packaging/") or path == DOC):
                continue
            for t in BERTH_TAG.findall(text):
                t = t.rstrip(".:")
                self.check(self.tag_ok(t), path, f"tag {t!r} is not in src/tags.rs")
            allowed = {self.manifest_path, posixpath.dirname(self.manifest_path or ""), self.data_dir, self.binary}
            for p in BERTH_PATH.findall(text):
                p = p.rstrip(".")
                self.check(
                    p in allowed or p.startswith("/tmp/"),
                    path,
                    f"path {p!r} is none of the code's ({', '.join(sorted(filter(None, allowed)))})",
                )
            for u in UNIT_NAME.findall(text):
                self.check(u == self.unit, path, f"unit {u!r} is not systemd/{self.unit}")
            if path.endswith(".tf") or path == DOC:
                for name in (":".join(m) for m in IAM_NAME.findall(text)):
                    self.check(
                        name in self.iam_names or (name == TRUST_ACTION and path.endswith(".tf")),
                        path,
                        f"IAM name {name!r} is not in {POLICY}",
                    )
        for path in (f"{TF_DIR}/main.tf", DOC):
            self.check(
                KEY_RULE_TEXT in self.files.get(path, ""),
                path,
                f"does not state the instance tag key rule ({KEY_RULE_TEXT})",
            )

    # ---- Terraform ----------------------------------------------------------------

    def terraform(self):
        tf = {"resource": [], "variable": [], "locals": []}
        tf_files = [p for p in self.files if p.startswith(TF_DIR + "/") and p.endswith(".tf")]
        self.check(tf_files, TF_DIR, "no .tf files")
        for p in tf_files:
            try:
                parsed = parse_hcl(self.files[p])
            except Exception as e:  # the parser raises several kinds
                self.check(False, p, f"does not parse: {first_line(e)}")
                return
            for k in tf:
                tf[k] += parsed.get(k, [])
        res = {}
        for r in tf["resource"]:
            for typ, named in r.items():
                for name, body in named.items():
                    res.setdefault(typ, {})[name] = body
        variables = {n: b for v in tf["variable"] for n, b in v.items()}
        local_values = {k: v for l in tf["locals"] for k, v in l.items()}
        where = f"{TF_DIR}/main.tf"

        def resolve(v):
            m = re.fullmatch(r"\$\{var\.(\w+)\}", v) if isinstance(v, str) else None
            return variables.get(m.group(1), {}).get("default") if m else v

        def one(typ):
            found = res.get(typ, {})
            self.check(len(found) == 1, where, f"expected one {typ}, found {len(found)}")
            return next(iter(found.items()), (None, {}))

        # The policy: loaded from the docs, attached to the instance profile's role.
        loaded = []
        for typ in ("aws_iam_role_policy", "aws_iam_policy"):
            for name, body in res.get(typ, {}).items():
                m = re.fullmatch(r'\$\{file\("([^"]+)"\)\}', str(body.get("policy", "")))
                if m:
                    path = posixpath.normpath(m.group(1).replace("${path.module}", TF_DIR))
                    self.check(path == POLICY, where, f"{typ}.{name} loads {path}, not {POLICY}")
                    loaded.append((typ, name, body))
        self.check(loaded, where, f"no IAM policy is loaded from {POLICY} with file()")
        everything = list(strings(tf))
        for action in sorted(self.policy_actions):
            self.check(
                not any(action in s for s in everything),
                where,
                f"{action} appears in the HCL: load {POLICY} with file(), do not copy it",
            )
        lt_name, lt = one("aws_launch_template")
        profile = ref(str(blocks(lt, "iam_instance_profile")), "aws_iam_instance_profile")
        role = ref(res.get("aws_iam_instance_profile", {}).get(profile, {}).get("role"), "aws_iam_role")
        self.check(
            any(typ == "aws_iam_role_policy" and ref(b.get("role"), "aws_iam_role") == role for typ, _, b in loaded),
            where,
            "the launch template's instance profile does not carry the loaded policy",
        )

        # IMDS: what the agent needs.
        md = (blocks(lt, "metadata_options") or [{}])[0]
        for key, want in (
            ("http_tokens", "required"),
            ("http_put_response_hop_limit", 1),
            ("instance_metadata_tags", "enabled"),
        ):
            self.check(md.get(key) == want, where, f"launch template metadata_options.{key} = {md.get(key)!r}, want {want!r}")
        self.check(md.get("http_endpoint", "enabled") == "enabled", where, "IMDS must be enabled")

        asg_name, asg = one("aws_autoscaling_group")
        self.check(
            ref(str(blocks(asg, "launch_template")), "aws_launch_template") == lt_name,
            where,
            "the group does not use the launch template",
        )

        # Lifecycle hooks.
        hooks = list(blocks(asg, "initial_lifecycle_hook")) + list(res.get("aws_autoscaling_lifecycle_hook", {}).values())
        transitions = sorted(h.get("lifecycle_transition") for h in hooks)
        launching, terminating = self.consts.get("LAUNCHING"), self.consts.get("TERMINATING")
        self.check(
            transitions == sorted([launching, terminating]),
            where,
            f"lifecycle hooks {transitions}, want one {launching} and one {terminating} (src/tags.rs)",
        )
        for h in hooks:
            t = resolve(h.get("heartbeat_timeout"))
            tr = h.get("lifecycle_transition")
            if tr == launching:
                self.check(h.get("default_result") == "ABANDON", where, "the launch hook must default to ABANDON")
                self.check(
                    isinstance(t, int) and 60 <= t <= (self.launch_timeout or 0),
                    where,
                    f"launch hook heartbeat_timeout {t!r}: want 60 s .. agent.launch_timeout ({self.launch_timeout} s); the agent heartbeats every third of it",
                )
            elif tr == terminating:
                self.check(h.get("default_result") == "CONTINUE", where, "the terminating hook must default to CONTINUE")
                self.check(
                    isinstance(t, int) and 30 <= t <= 600,
                    where,
                    f"terminating hook heartbeat_timeout {t!r}: want 30..600 s (longer than a drain; a retired member waits it out)",
                )

        # Tags on the group.
        static = blocks(asg, "tag")
        keys = [t.get("key") for t in static]
        for k in sorted(self.required_group_tags | {self.consts.get("TAG_VERSION")}):
            self.check(k in keys, where, f"the group has no {k} tag (required by {POLICY} or src/tags.rs)")
        tagsets = [(t.get("key"), t.get("propagate_at_launch")) for t in static]
        for d in blocks(asg, "dynamic"):
            for label, body in d.items():
                if label != "tag":
                    continue
                content = (blocks(body, "content") or [{}])[0]
                fe = str(body.get("for_each", ""))
                source = {}
                if (name := ref(fe, "local")) is not None:
                    source = local_values.get(name, {})
                elif (name := ref(fe, "var")) is not None:
                    var = variables.get(name, {})
                    source = var.get("default") or {}
                    if content.get("propagate_at_launch") is not False:
                        self.validation_ok(var, name, where)
                else:
                    self.check(
                        content.get("propagate_at_launch") is False,
                        where,
                        f"dynamic tag for_each {fe}: propagated keys that cannot be checked (use a local or a validated variable)",
                    )
                self.check(isinstance(source, dict), where, f"dynamic tag for_each {fe}: not a map")
                for k in source if isinstance(source, dict) else []:
                    tagsets.append((k, content.get("propagate_at_launch")))
        for k, propagate in tagsets:
            self.check(isinstance(k, str) and key_ok(k), where, f"tag key {k!r} breaks the instance-metadata-tags key rule")
            if isinstance(k, str) and k.startswith("berth:"):
                self.check(propagate is False, where, f"{k} must not be propagated to instances (propagate_at_launch = false)")
        for spec in blocks(lt, "tag_specifications"):
            for k in spec.get("tags", {}) or {}:
                self.check(key_ok(k), where, f"launch template tag key {k!r} breaks the instance-metadata-tags key rule")

        # The example cluster exists in the example manifest.
        cluster = variables.get("cluster", {}).get("default")
        try:
            clusters = tomllib.loads(self.files.get(EXAMPLE_MANIFEST, "")).get("clusters", {})
        except tomllib.TOMLDecodeError as e:
            clusters = {}
            self.check(False, EXAMPLE_MANIFEST, f"does not parse: {e}")
        self.check(cluster in clusters, f"{TF_DIR}/variables.tf", f"var.cluster default {cluster!r} is not a cluster of {EXAMPLE_MANIFEST}")

        # The NLB: a network load balancer whose target group the group is attached to.
        tg = ref(str(asg.get("target_group_arns")), "aws_lb_target_group")
        self.check(tg in res.get("aws_lb_target_group", {}), where, "the group is attached to no aws_lb_target_group")
        self.check(
            any(b.get("load_balancer_type") == "network" for b in res.get("aws_lb", {}).values()),
            where,
            "no network load balancer",
        )
        self.check(
            any(tg and ref(str(b), "aws_lb_target_group") == tg for b in res.get("aws_lb_listener", {}).values()),
            where,
            "no listener forwards to the group's target group",
        )

    def validation_ok(self, var, name, where):
        """A propagated map variable must refuse keys the rule refuses."""
        conds = [str(v.get("condition", "")) for v in blocks(var, "validation")]
        m = next((re.search(r'regex\("((?:[^"\\]|\\.)*)"', c) for c in conds if "regex(" in c), None)
        if not self.check(m, where, f"var.{name} is propagated to instances but has no validation of its keys"):
            return
        rx = re.compile(m.group(1).replace("\\\\", "\\"))
        good = ["Name", "berth:version", "a+b-c=d.e,f_g:h@i", "x" * 128]
        bad = ["a b", "a/b", "", "a~b", "x" * 129]
        self.check(
            all(rx.fullmatch(k) for k in good) and not any(rx.fullmatch(k) for k in bad),
            where,
            f"var.{name}'s key regex {rx.pattern!r} does not follow the instance-metadata-tags rule",
        )
        self.check(
            all(f'"{k}"' in " ".join(conds) for k in INSTANCE_TAG_KEY_FORBIDDEN),
            where,
            f"var.{name} does not refuse the keys {sorted(INSTANCE_TAG_KEY_FORBIDDEN)}",
        )

    # ---- Packer ---------------------------------------------------------------------

    def packer(self):
        files = [p for p in self.files if p.startswith(PACKER_DIR + "/") and p.endswith(".pkr.hcl")]
        if not self.check(len(files) == 1, PACKER_DIR, f"expected one .pkr.hcl, found {files}"):
            return
        where = files[0]
        try:
            pk = parse_hcl(self.files[where])
        except Exception as e:
            self.check(False, where, f"does not parse: {first_line(e)}")
            return
        sources = {t for s in pk.get("source", []) for t in s}
        self.check("amazon-ebs" in sources, where, f"no amazon-ebs source (found {sorted(sources)})")
        provisioners = [(kind, body) for b in pk.get("build", []) for p in blocks(b, "provisioner") for kind, body in p.items()]
        lines = [line for kind, body in provisioners if kind == "shell" for line in body.get("inline", [])]
        dests = [str(body.get("destination", "")) for kind, body in provisioners if kind == "file"]
        mp, dd, unit, binary = self.manifest_path, self.data_dir, self.unit, self.binary

        def index(pattern):
            return next((i for i, line in enumerate(lines) if re.search(pattern, line)), None)

        wrote = index(rf"\b(install|cp|mv)\b.*\s{re.escape(mp)}$") if mp else None
        self.check(wrote is not None or mp in dests, where, f"nothing writes the manifest to {mp}")
        validate = index(rf"(^|\s){re.escape(binary or '?')} validate --config {re.escape(mp or '?')}(\s|;|$)")
        self.check(validate is not None, where, f"never runs `{binary} validate --config {mp}`")
        enable = index(rf"systemctl enable\b.*(?<![\w.@-]){re.escape(unit or '?')}\b")
        self.check(enable is not None, where, f"never runs `systemctl enable {unit}`")
        cleanup = index(rf"find {re.escape(dd or '?')} -mindepth 1 -delete|rm -rf {re.escape(dd or '?')}(/\*?)?(\s|;|$)")
        self.check(cleanup is not None, where, f"never empties {dd}: an image must not carry a pin")
        if None not in (cleanup, validate, enable):
            self.check(cleanup > max(validate, enable), where, f"{dd} must be emptied after the agent may have run")
        for d in dests:
            self.check(not (dd and d.startswith(dd)), where, f"uploads into {dd}")

    def run(self):
        self.code()
        if self.errors:  # nothing else means anything without the code's names
            return self
        self.names()
        self.terraform()
        self.packer()
        return self


def first_line(e):
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def eval_product(expr):
    n = 1
    for f in expr.split("*"):
        n *= int(f.strip())
    return n


# ---- self-test: every kind of drift is caught ---------------------------------------


def replace(path, old, new):
    def mutate(files):
        assert old in files[path], f"self-test is stale: {old!r} is not in {path}"
        files[path] = files[path].replace(old, new)

    return mutate


def rename(path, new_path):
    def mutate(files):
        files[new_path] = files.pop(path)

    return mutate


MAIN = f"{TF_DIR}/main.tf"
VARS = f"{TF_DIR}/variables.tf"
PACKER = f"{PACKER_DIR}/berth.pkr.hcl"
DRIFTS = [
    ("a renamed group tag in Terraform", replace(MAIN, '"berth:cluster"', '"berth:clusters"'), "berth:clusters"),
    ("a renamed tag constant in the code", replace("src/tags.rs", '"berth:drift-grace"', '"berth:grace"'), "berth:drift-grace"),
    ("berth:version missing from the group", replace(MAIN, 'key                 = "berth:version"', 'key                 = "Owner"'), "no berth:version tag"),
    ("the code's cluster tag renamed", replace("src/tags.rs", '"berth:cluster"', '"berth:kluster"'), "berth:cluster"),
    ("a tag the code does not know, in the doc", replace(DOC, "berth:version", "berth:nudge"), "berth:nudge"),
    ("hop limit 2", replace(MAIN, "http_put_response_hop_limit = 1", "http_put_response_hop_limit = 2"), "hop_limit"),
    ("IMDSv1 allowed", replace(MAIN, 'http_tokens = "required"', 'http_tokens = "optional"'), "http_tokens"),
    ("instance-metadata tags off", replace(MAIN, 'instance_metadata_tags = "enabled"', 'instance_metadata_tags = "disabled"'), "instance_metadata_tags"),
    ("a misspelt terminating transition", replace(MAIN, "EC2_INSTANCE_TERMINATING", "EC2_INSTANCE_TERMINATE"), "lifecycle hooks"),
    ("the code's transition renamed", replace("src/tags.rs", "autoscaling:EC2_INSTANCE_LAUNCHING", "autoscaling:EC2_INSTANCE_LAUNCH"), "lifecycle hooks"),
    ("a launch hook of an hour", replace(VARS, "default     = 300", "default     = 3600"), "launch hook heartbeat_timeout"),
    ("a launch hook that lets a broken instance in", replace(MAIN, 'default_result    = "ABANDON"', 'default_result    = "CONTINUE"'), "ABANDON"),
    ("the policy copied inline", replace(MAIN, 'file("${path.module}/../../docs/iam-policy.json")', 'jsonencode({ Statement = [{ Action = "autoscaling:SetInstanceHealth" }] })'), "do not copy it"),
    ("the policy loaded from the wrong path", replace(MAIN, "/../../docs/iam-policy.json", "/../docs/iam-policy.json"), "loads packaging/docs/iam-policy.json"),
    ("an IAM action berth's policy lacks", replace(MAIN, "# Trust policy:", "# Needs autoscaling:PutLifecycleHook. Trust policy:"), "autoscaling:PutLifecycleHook"),
    ("an action dropped from the policy", replace(POLICY, '"autoscaling:SetInstanceHealth",', ""), "SetInstanceHealth"),
    ("a propagated berth tag", replace(MAIN, 'value               = var.berth_version\n    propagate_at_launch = false', 'value               = var.berth_version\n    propagate_at_launch = true'), "must not be propagated"),
    ("an instance tag key with a space", replace(MAIN, 'key                 = "Name"', 'key                 = "Team Name"'), "key rule"),
    ("an instance tag key with a slash", replace(VARS, "default     = {}", 'default     = { "team/owner" = "x" }'), "key rule"),
    ("a key regex that lets '/' in", replace(VARS, "^[A-Za-z0-9+=.,_:@-]{1,128}$", "^[A-Za-z0-9+=.,_:@/-]{1,128}$"), "does not follow"),
    ("the rule dropped from the comments", replace(MAIN, "+ - = . , _ : @", "the usual characters"), "does not state"),
    ("another manifest path in Packer", replace(PACKER, "/etc/berth/berth.toml", "/etc/berth/config.toml"), "/etc/berth/config.toml"),
    ("the code's manifest path moved", replace("src/manifest.rs", '"/etc/berth/berth.toml"', '"/etc/berth/agent.toml"'), "berth.toml"),
    ("the code's data dir moved", replace("src/manifest.rs", '"/var/lib/berth"', '"/var/lib/berth-agent"'), "/var/lib/berth"),
    ("another binary path", replace(PACKER, "/usr/bin/berth validate", "/usr/local/bin/berth validate"), "/usr/local/bin/berth"),
    ("another unit name in Packer", replace(PACKER, "docker.service berth.service", "docker.service berthd.service"), "berthd.service"),
    ("the unit file renamed", rename("systemd/berth.service", "systemd/berth-agent.service"), "berth.service"),
    ("no data dir cleanup", replace(PACKER, '"if [ -d /var/lib/berth ]; then find /var/lib/berth -mindepth 1 -delete; fi",', ""), "never empties"),
    ("no manifest validation", replace(PACKER, '"/usr/bin/berth validate --config /etc/berth/berth.toml",', ""), "validate"),
    ("no amazon-ebs source", replace(PACKER, 'source "amazon-ebs" "berth"', 'source "amazon-ebssurrogate" "berth"'), "amazon-ebs"),
    ("a cluster the example manifest lacks", replace(VARS, 'default     = "web"', 'default     = "api"'), "not a cluster"),
    ("HCL that does not parse", replace(MAIN, "resource \"aws_lb\" \"berth\" {", "resource \"aws_lb\" \"berth\" {{"), "does not parse"),
    ("no NLB target group on the group", replace(MAIN, "target_group_arns = [aws_lb_target_group.berth.arn]", ""), "target group"),
]


def self_test(files):
    base = Checks(files).run()
    failures = [f"the unchanged files do not pass: {e}" for e in base.errors]
    for what, mutate, expect in DRIFTS:
        mutated = copy.deepcopy(files)
        try:
            mutate(mutated)
        except AssertionError as e:
            failures.append(f"{what}: {e}")
            continue
        errors = Checks(mutated).run().errors
        if not any(expect in e for e in errors):
            failures.append(f"{what}: not caught (wanted an error with {expect!r}; got {errors})")
        else:
            print(f"caught: {what}: {next(e for e in errors if expect in e)}")
    for f in failures:
        print(f"SELF-TEST FAILED: {f}")
    print(f"self-test: {len(DRIFTS) - len(failures)} of {len(DRIFTS)} drifts caught")
    return not failures


def main():
    try:
        import hcl2  # noqa: F401
        from hcl2.utils import SerializationOptions  # noqa: F401
    except ImportError:
        print("python-hcl2 8.x is missing: run tests/setup.sh", file=sys.stderr)
        return 2
    files = load_files(ROOT)
    if "--self-test" in sys.argv[1:]:
        return 0 if self_test(files) else 1
    c = Checks(files).run()
    for e in c.errors:
        print(f"DRIFT: {e}")
    print(f"infra: {c.passed} checks passed, {len(c.errors)} failed")
    return 1 if c.errors else 0


if __name__ == "__main__":
    sys.exit(main())
