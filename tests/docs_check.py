#!/usr/bin/env python3
"""Checks that the docs, the README and the packaging name only what exists.

Run by tests/docs.rs with the built binary:

    python3 tests/docs_check.py --berth target/debug/berth [--self-test]

It reads README.md, every docs/**/*.md, every text file under packaging/
and systemd/, and checks, against the code:

* tags: every `berth:<name>` is a constant of src/tags.rs, and every
  `berth:<name>:<x>` uses a prefix constant of it (`berth:version:<component>`
  and `berth:version:proxy` alike). A tag that only the design names (say
  `berth:refresh-before`) is not in src/tags.rs, so it fails like a typo.
* commands: every `berth <command> [--flag ...]` in a command line (code
  blocks and inline code of the Markdown files; the non-comment lines of the
  other files) is a command the binary accepts (`berth <command> --help`
  succeeds), and each of its flags is one that command's `--help` lists.
* IAM: every `autoscaling:Action`, `ec2:Action`, `ecr:Action`,
  `cloudwatch:Action`, `ssm:Action`, `secretsmanager:Action`, `kms:Action`
  named is an action (or a condition key, such as `kms:ViaService`) of
  docs/iam-policy.json.
* paths: every absolute berth path (`/etc/berth...`, `/var/lib/berth...`,
  `/usr/bin/berth...`) is one the code (a string literal of src/, the data
  directory's file names), the unit (systemd/) or the package metadata
  (Cargo.toml) uses.
* examples: every `-var NAME=` given to packer or terraform is a variable of
  packaging/packer or packaging/terraform; every `terraform output NAME` an
  output of packaging/terraform.
* links: every relative Markdown link points to a file that exists, and
  every `#anchor` to a heading of its target.
* no machine-local paths in the docs: not the checkout's own absolute path
  (or its parent's), where a doc written on one machine would leak it.

`--self-test` breaks the inputs in memory one way at a time (a bogus flag, a
bogus command, a design-only tag, a policy without an action the docs name,
a renamed tag constant, a flag gone from the binary, ...) and fails unless
every break is caught, and unless text that only looks like a command (the
word berth in a shell string, the data directory in a `find`) passes.

Exit status 0 when everything agrees; otherwise every problem is printed as
`path:line: message`.
"""

import copy
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POLICY = "docs/iam-policy.json"

TAG_CONST = re.compile(r'pub const (\w+): &str = "(berth:[^"]*)";')
BERTH_TAG = re.compile(r"(?<![\w.-])berth:([a-z][a-z0-9-]*)(?::([^\s`'\"),\]|=;]+))?")
IAM_ACTION = re.compile(
    r"(?<![\w:/.-])(autoscaling|ec2|ecr|cloudwatch|ssm|secretsmanager|kms):([A-Z][A-Za-z]+)(?![\w/])"
)
BERTH_PATH = re.compile(r"(?<![\w.}$-])(?:/etc/berth|/var/lib/berth|/usr/bin/berth)[\w./@-]*")
# The checkout's parent directory, e.g. the folder all working copies of
# this machine live in: a doc must never name it.
_PARENT = os.path.dirname(ROOT).rstrip("/")
# (A checkout directly under / has no such folder to leak: no check then.)
MACHINE_PATH = re.compile(r"(?<![\w.])" + re.escape(_PARENT + "/")) if _PARENT else None
# An invocation of the binary, then its arguments to the end of the
# command: the binary's path (/usr/bin/berth, target/debug/berth, ./berth;
# not the data directory /var/lib/berth) or a shell variable named berth,
# anywhere; a bare `berth` only where a command starts (the start of a line
# or of inline code, after a `$ ` prompt, `;`, `&&`, `|`, `$(` or `sudo`),
# so that prose such as `say "building berth and the demo"` is not taken
# for a command.
ARGS = r"""["']?[ \t]+([^\s;&|)`#]+)([^;&|)`#]*)"""
INVOCATION = re.compile(
    r"""(?:(?:^|(?<=[\s;&|(`'"=]))(?:/usr/(?:local/)?bin/|[\w.${}/-]*target/(?:debug|release)/|\./)berth"""
    r"""|(?:^|(?<=[\s;&|(`'"=]))\$\{?berth\}?"""
    r"""|(?:^[ \t]*(?:\$[ \t]+)?|(?:;|&&|\|\||\||\$\(|\bsudo|\bexec)[ \t]*)berth)""" + ARGS
)
FENCE = re.compile(r"^(\s*)(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
MD_LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
TF_VAR = re.compile(r"""-var[ \t]+['"]?([A-Za-z_][A-Za-z0-9_]*)=""")
TF_OUTPUT = re.compile(r"terraform[ \t]+output[ \t]+(?:-\S+[ \t]+)*([A-Za-z_][A-Za-z0-9_]*)")
HCL_VARIABLE = re.compile(r'^\s*variable\s+"([^"]+)"', re.M)
HCL_OUTPUT = re.compile(r'^\s*output\s+"([^"]+)"', re.M)
HELP_COMMAND = re.compile(r"^  ([a-z][a-z0-9-]*)\s{2,}\S", re.M)
HELP_FLAG = re.compile(r"^\s+(?:-([A-Za-z]), )?--([a-z][a-z0-9-]*)", re.M)


# ---- inputs -----------------------------------------------------------------


def is_text(path):
    try:
        with open(path, "rb") as f:
            return b"\0" not in f.read(8192)
    except OSError:
        return False


def walk(rel_dir):
    out = []
    for dirpath, _, names in os.walk(os.path.join(ROOT, rel_dir)):
        for n in names:
            p = os.path.relpath(os.path.join(dirpath, n), ROOT)
            if is_text(os.path.join(ROOT, p)):
                out.append(p)
    return sorted(out)


def load_files():
    """Every file the checks read, by path relative to the repository."""
    checked = ["README.md"]
    checked += [p for p in walk("docs") if p.endswith(".md")]
    checked += walk("packaging") + walk("systemd")
    sources = [p for p in walk("src") if p.endswith(".rs")]
    sources += [POLICY, "Cargo.toml"]
    files = {}
    for p in sorted(set(checked + sources)):
        with open(os.path.join(ROOT, p), encoding="utf-8") as f:
            files[p] = f.read()
    return files, checked


def help_text(berth, args):
    r = subprocess.run([berth, *args, "--help"], capture_output=True, text=True)
    return r.stdout if r.returncode == 0 else None


def load_cli(berth):
    """What the binary accepts: its commands and the flags of each, from
    `--help` (a hidden command counts if `berth <command> --help` works)."""
    top = help_text(berth, [])
    if top is None:
        raise SystemExit(f"cannot run {berth} --help")
    cli = {"": flags_of(top), "commands": {}}
    section = top.split("Commands:", 1)[1].split("Options:", 1)[0]
    for name in HELP_COMMAND.findall(section):
        sub = help_text(berth, [name])
        cli["commands"][name] = flags_of(sub or "")
    cli["berth"] = berth
    return cli


def flags_of(text):
    flags = set()
    for short, long in HELP_FLAG.findall(text):
        flags.add("--" + long)
        if short:
            flags.add("-" + short)
    return flags


def command_flags(cli, name):
    """The flags of command `name`, or None when the binary has no such
    command. Commands the top-level help does not list are asked directly."""
    if name not in cli["commands"]:
        sub = help_text(cli["berth"], [name]) if cli.get("berth") else None
        cli["commands"][name] = flags_of(sub) if sub else None
    return cli["commands"][name]


# ---- what the code has ----------------------------------------------------------


class Known:
    def __init__(self, files):
        tags = [v for _, v in TAG_CONST.findall(files.get("src/tags.rs", ""))]
        self.tags = {t for t in tags if not t.endswith(":")}
        self.tag_prefixes = {t for t in tags if t.endswith(":")}

        try:
            policy = json.loads(files.get(POLICY, "{}"))
        except json.JSONDecodeError:
            policy = {}
        self.actions = set()
        for st in policy.get("Statement", []):
            a = st.get("Action", [])
            self.actions.update([a] if isinstance(a, str) else a)
            for cond in st.get("Condition", {}).values():
                self.actions.update(k for k in cond if not k.startswith("aws:"))

        paths = set()
        file_names = set()
        for p, text in files.items():
            if p.startswith("src/"):
                for line in text.split("\n"):
                    if line.lstrip().startswith("//"):
                        continue  # doc comments are docs, not what the code uses
                    for lit in re.findall(r'"([^"\\]*)"', line):
                        paths.update(BERTH_PATH.findall(lit))
                file_names.update(re.findall(r'pub const \w+_FILE: &str = "([^"/]+)";', text))
            elif p.startswith("systemd/"):
                paths.update(BERTH_PATH.findall(text))
                for d in re.findall(r"^StateDirectory=(\S+)", text, re.M):
                    paths.add("/var/lib/" + d)
            elif p == "Cargo.toml":
                for m in re.findall(r'"/?((?:etc/berth|var/lib/berth|usr/bin/berth)[^"]*)"', text):
                    paths.add("/" + m)
        paths = {clean_path(p) for p in paths}
        for p in list(paths):
            if p.startswith("/var/lib/berth") and "." not in os.path.basename(p):
                paths.update(f"{p}/{n}" for n in file_names)
        for p in list(paths):  # a known file's directories are known too
            while p.count("/") > 2:
                p = os.path.dirname(p)
                if "berth" in p:
                    paths.add(p)
        self.paths = paths

        def hcl(pattern, prefix):
            return {
                n
                for p, t in files.items()
                if p.startswith(prefix) and (p.endswith(".tf") or p.endswith(".hcl"))
                for n in pattern.findall(t)
            }

        self.tf_vars = hcl(HCL_VARIABLE, "packaging/terraform/")
        self.packer_vars = hcl(HCL_VARIABLE, "packaging/packer/")
        self.tf_outputs = hcl(HCL_OUTPUT, "packaging/terraform/")


def clean_path(p):
    p = p.rstrip(".,:;")
    return p.rstrip("/") if len(p) > 1 else p


# ---- reading the files ------------------------------------------------------------


def md_code(text):
    """(line number, code) for every line of a fenced block, and every
    inline code span outside them, of a Markdown text."""
    out = []
    fence = None
    for n, line in enumerate(text.split("\n"), 1):
        m = FENCE.match(line)
        if m:
            fence = None if fence else m.group(2)
            continue
        if fence:
            out.append((n, line))
        else:
            out.extend((n, c.strip()) for _, c in INLINE_CODE.findall(line))
    return out


def command_lines(path, text):
    """(line number, logical line) of the text where commands may appear:
    code in Markdown; otherwise every line that is not a comment. Lines
    continued with a backslash are joined."""
    raw = md_code(text) if path.endswith(".md") else list(enumerate(text.split("\n"), 1))
    out = []
    pending = None
    for n, line in raw:
        s = line.strip()
        if s.startswith("#!"):
            continue
        if s.startswith("#") or s.startswith("//"):
            continue
        line = re.sub(r"\s#\s.*$", "", line)
        if pending:
            pending = (pending[0], pending[1] + " " + line.strip())
        else:
            pending = (n, line)
        if pending[1].rstrip().endswith("\\"):
            pending = (pending[0], pending[1].rstrip()[:-1])
            continue
        out.append(pending)
        pending = None
    if pending:
        out.append(pending)
    return out


def slugs(text):
    """GitHub's anchors for the headings of a Markdown text."""
    seen = {}
    out = set()
    fence = False
    for line in text.split("\n"):
        if FENCE.match(line):
            fence = not fence
            continue
        m = None if fence else HEADING.match(line)
        if not m:
            continue
        s = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m.group(2)).lower()
        s = re.sub(r"[^\w\- ]", "", s).replace(" ", "-")
        k = seen.get(s, 0)
        seen[s] = k + 1
        out.add(s if k == 0 else f"{s}-{k}")
    return out


# ---- the checks -------------------------------------------------------------------


class Checker:
    def __init__(self, files, checked, cli):
        self.files = files
        self.checked = checked
        self.cli = cli
        self.known = Known(files)
        self.problems = []

    def problem(self, path, line, message):
        self.problems.append(f"{path}:{line}: {message}")

    def run(self):
        for path in self.checked:
            text = self.files[path]
            self.names(path, text)
            for n, line in command_lines(path, text):
                self.commands(path, n, line)
                self.examples(path, n, line)
            if path.endswith(".md"):
                self.links(path, text)
                for n, line in enumerate(text.split("\n"), 1):
                    if MACHINE_PATH and MACHINE_PATH.search(line):
                        self.problem(path, n, "names a machine-local path (this checkout's)")
        return self.problems

    def names(self, path, text):
        k = self.known
        for n, line in enumerate(text.split("\n"), 1):
            for m in BERTH_TAG.finditer(line):
                name, suffix = m.group(1), m.group(2)
                if suffix is not None:
                    if f"berth:{name}:" not in k.tag_prefixes:
                        self.problem(path, n, f"tag {m.group(0)}: src/tags.rs has no prefix berth:{name}:")
                elif f"berth:{name}" not in k.tags:
                    self.problem(path, n, f"tag berth:{name} is not a tag of src/tags.rs (a typo, or a design that is not built)")
            for m in IAM_ACTION.finditer(line):
                if m.group(0) not in k.actions:
                    self.problem(path, n, f"IAM action {m.group(0)} is not in {POLICY}")
            for m in BERTH_PATH.finditer(line):
                p = clean_path(m.group(0))
                if p not in k.paths:
                    self.problem(path, n, f"path {p} is not one the code, the unit or the package uses (known: {', '.join(sorted(k.paths))})")

    def commands(self, path, n, line):
        for m in INVOCATION.finditer(line):
            first, rest = m.group(1), m.group(2)
            args = [clean_arg(a) for a in (first + " " + rest).split()]
            args = [a for a in args if a]
            if not args:
                continue
            if args[0].startswith("-"):
                allowed, what = self.cli[""], "berth"
                flags = args
            elif re.fullmatch(r"[a-z][a-z0-9-]*", args[0]):
                allowed = command_flags(self.cli, args[0])
                what = f"berth {args[0]}"
                if allowed is None:
                    self.problem(path, n, f"`berth {args[0]}`: the binary has no command {args[0]!r} (has: {', '.join(sorted(c for c, f in self.cli['commands'].items() if f is not None))})")
                    continue
                flags = args[1:]
            else:
                continue  # prose: "the berth .deb", not a command line
            for a in flags:
                if not a.startswith("-") or a == "-":
                    continue
                flag = a.split("=", 1)[0]
                if flag not in allowed:
                    self.problem(path, n, f"`{what}` has no flag {flag} (has: {', '.join(sorted(allowed))})")

    def examples(self, path, n, line):
        k = self.known
        for m in TF_VAR.finditer(line):
            var = m.group(1)
            before = line[: m.start()]
            if "packer" in before and "terraform" not in before:
                ok, where = var in k.packer_vars, "packaging/packer"
            elif "terraform" in before and "packer" not in before:
                ok, where = var in k.tf_vars, "packaging/terraform"
            else:
                ok, where = var in k.tf_vars | k.packer_vars, "packaging/"
            if not ok:
                self.problem(path, n, f"-var {var}: {where} declares no variable {var!r}")
        for m in TF_OUTPUT.finditer(line):
            if m.group(1) not in k.tf_outputs:
                self.problem(path, n, f"terraform output {m.group(1)}: packaging/terraform has no such output")

    def links(self, path, text):
        here = os.path.dirname(path)
        for n, line in enumerate(text.split("\n"), 1):
            for m in MD_LINK.finditer(line):
                target = m.group(1)
                if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                    continue  # a URL
                file_part, _, anchor = target.partition("#")
                dest = os.path.normpath(os.path.join(here, file_part)) if file_part else path
                if dest not in self.files and not os.path.exists(os.path.join(ROOT, dest)):
                    self.problem(path, n, f"link {target}: {dest} does not exist")
                    continue
                if anchor and dest.endswith(".md"):
                    body = self.files.get(dest)
                    if body is None:
                        with open(os.path.join(ROOT, dest), encoding="utf-8") as f:
                            body = f.read()
                    if anchor not in slugs(body):
                        self.problem(path, n, f"link {target}: {dest} has no heading #{anchor}")


def clean_arg(a):
    return a.strip("[]{}\"'<>")


# ---- self-test ------------------------------------------------------------------------

DOC = "docs/operations.md"


def append(path, text):
    def mutate(files, cli):
        files[path] = files.get(path, "") + "\n" + text + "\n"

    return mutate


def replace(path, old, new):
    def mutate(files, cli):
        if old not in files[path]:
            raise AssertionError(f"self-test: {old!r} is not in {path}")
        files[path] = files[path].replace(old, new)

    return mutate


def drop_flag(command, flag):
    def mutate(files, cli):
        cli["commands"][command] = set(cli["commands"][command]) - {flag}

    return mutate


def drop_action(action):
    def mutate(files, cli):
        policy = json.loads(files[POLICY])
        for st in policy["Statement"]:
            a = st["Action"]
            st["Action"] = [x for x in ([a] if isinstance(a, str) else a) if x != action]
        files[POLICY] = json.dumps(policy)

    return mutate


BREAKS = [
    ("a bogus flag in a code block", append(DOC, "```sh\nberth status --bogus-flag\n```"), "--bogus-flag"),
    ("a bogus flag in inline code", append(DOC, "Run `berth plan --jsn`."), "--jsn"),
    ("a bogus flag in a packaging script", append("packaging/demo/run.sh", '"$berth" run --locale "$work/local.toml"'), "--locale"),
    ("a bogus flag on a continued line", append(DOC, "```sh\nberth run --config x \\\n  --namespces y\n```"), "--namespces"),
    ("a command that does not exist", append(DOC, "```sh\nberth frobnicate\n```"), "frobnicate"),
    ("a fleet command (designed, not built)", append(DOC, "`berth fleet status`"), "'fleet'"),
    ("a design-only tag", append(DOC, "Set berth:refresh-before on the group."), "berth:refresh-before"),
    ("a design-only tag in a command", append(DOC, "```sh\naws autoscaling create-or-update-tags --tags Key=berth:refresh-before,Value=x\n```"), "berth:refresh-before"),
    ("a per-component tag with an unknown prefix", append(DOC, "`berth:versoin:web`"), "berth:versoin:"),
    ("a renamed tag constant", replace("src/tags.rs", '"berth:paused"', '"berth:pause"'), "berth:paused"),
    ("an IAM action not in the policy", append(DOC, "It needs autoscaling:UpdateAutoScalingGroup."), "autoscaling:UpdateAutoScalingGroup"),
    ("an action gone from the policy", drop_action("ec2:CreateTags"), "ec2:CreateTags"),
    ("a secrets action not in the policy", append(DOC, "It needs ssm:GetParameter."), "ssm:GetParameter"),
    ("a secrets action gone from the policy", drop_action("secretsmanager:BatchGetSecretValue"), "secretsmanager:BatchGetSecretValue"),
    ("a path the code does not use", append(DOC, "Edit /etc/berth/agent.toml."), "/etc/berth/agent.toml"),
    ("a data dir file the code does not write", append(DOC, "See /var/lib/berth/state.json."), "/var/lib/berth/state.json"),
    ("a data dir file renamed in the code", replace("src/store.rs", 'PIN_FILE: &str = "pin.json"', 'PIN_FILE: &str = "pinned.json"'), "/var/lib/berth/pin.json"),
    ("a flag gone from the binary", drop_flag("status", "--json"), "--json"),
    ("a packer variable that does not exist", append(DOC, "```sh\npacker build -var regoin=x packaging/packer\n```"), "regoin"),
    ("a terraform variable that does not exist", append(DOC, "```sh\nterraform apply -var 'subnets=[]'\n```"), "subnets"),
    ("a terraform output that does not exist", append(DOC, "```sh\nterraform output nlb_dns\n```"), "nlb_dns"),
    ("a link to a file that does not exist", append(DOC, "[x](no-such-doc.md)"), "no-such-doc.md"),
    ("a link to a heading that does not exist", append(DOC, "[x](manifest.md#no-such-heading)"), "no-such-heading"),
]
if MACHINE_PATH:
    BREAKS.append(("a machine-local path", append(DOC, "See " + _PARENT + "/other/README.md."), "machine-local"))


# Text that must not be taken for a problem.
NON_BREAKS = [
    ("prose in a shell string", append("packaging/demo/run.sh", 'say "building berth and the demo (debug)"')),
    ("prose in a unit file", append("systemd/berth.service", "Description=berth boot agent")),
    ("the data directory in a shell command", append("packaging/demo/run.sh", "find /var/lib/berth -mindepth 1 -delete")),
    ("a console prompt", append(DOC, "```console\n$ berth status --json\n```")),
    ("a command after &&", append(DOC, "```sh\ncd x && berth validate --config berth.toml\n```")),
]


def self_test(files, checked, cli):
    base = Checker(copy.deepcopy(files), checked, copy.deepcopy(cli)).run()
    if base:
        print("SELF-TEST: the unbroken inputs must pass first:")
        for p in base:
            print(f"  {p}")
        return False
    failed = []
    for name, mutate, expect in BREAKS:
        f, c = copy.deepcopy(files), copy.deepcopy(cli)
        mutate(f, c)
        problems = Checker(f, sorted(set(checked) | ({DOC} if DOC in f else set())), c).run()
        if any(expect in p for p in problems):
            print(f"caught: {name}")
        else:
            failed.append(f"{name}: no problem mentions {expect!r} (got: {problems})")
    for name, mutate in NON_BREAKS:
        f, c = copy.deepcopy(files), copy.deepcopy(cli)
        mutate(f, c)
        problems = Checker(f, sorted(set(checked) | ({DOC} if DOC in f else set())), c).run()
        if problems:
            failed.append(f"{name}: must pass, got {problems}")
        else:
            print(f"passed: {name}")
    for f in failed:
        print(f"SELF-TEST FAILED: {f}")
    return not failed


def main():
    args = sys.argv[1:]
    if "--berth" not in args:
        print("usage: docs_check.py --berth PATH [--self-test]", file=sys.stderr)
        return 2
    berth = args[args.index("--berth") + 1]
    files, checked = load_files()
    cli = load_cli(berth)
    if "--self-test" in args:
        return 0 if self_test(files, checked, cli) else 1
    problems = Checker(files, checked, cli).run()
    for p in problems:
        print(p)
    print(f"{len(checked)} files checked: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
