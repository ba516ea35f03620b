#!/usr/bin/python3
"""Every program, command and subcommand prints its help with --help and
exits 0 (issue #18: `kinfer model --help` used to exit 2).  The commands are
read from the programs' own help listings, so a new one is covered without
editing this file; a listing that stops naming them fails here.

    KINFER_BIN=build /usr/bin/python3 tests/py/test_cli_help.py
"""
import os
import re
import subprocess
import unittest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.join(REPO, os.environ.get("KINFER_BIN", "build"))


def run(*args):
    p = subprocess.run([os.path.join(BIN, args[0])] + list(args[1:]), capture_output=True,
                       text=True, timeout=30, env={"PATH": os.environ.get("PATH", "")})
    return p.returncode, p.stdout, p.stderr


def listed(text, header_re):
    """The words at the start of the indented lines after a header line."""
    names, on = [], False
    for line in text.splitlines():
        if re.match(header_re, line):
            on = True
            continue
        m = re.match(r"^  ([a-z]+)\s{2,}\S", line)
        if on and m:
            names.append(m.group(1))
        elif on and line and not line.startswith(" "):
            on = False
    return names


class HelpTest(unittest.TestCase):
    def check(self, *args):
        rc, out, err = run(*args, "--help")
        self.assertEqual(rc, 0, f"{' '.join(args)} --help: exit {rc}: {err}")
        self.assertIn("usage", out.lower(), f"{' '.join(args)} --help printed no usage")
        return out

    def test_programs(self):
        for prog in ("kinfer-worker", "kinfer-devbroker", "kinfer"):
            self.check(prog)
        for source in ((), ("sklearn",), ("torch",), ("npz",)):
            out = self.check("kinfer-convert", *source)
            self.assertIn("kinfer-convert sklearn MODEL.joblib", out)

    def test_every_command_and_subcommand(self):
        commands = listed(self.check("kinfer"), r"^Commands:")
        self.assertEqual(set(commands) >= {"submit", "get", "wait", "usage", "quota", "model",
                                            "bench", "top", "key"}, True, commands)
        seen = 0
        for c in commands:
            out = self.check("kinfer", c)
            subs = re.findall(r"^  ([a-z]+)\s{2,}\S", out, re.M) if "SUBCOMMAND" in out else []
            for sub in subs:
                self.check("kinfer", c, sub)
                seen += 1
        self.assertGreaterEqual(seen, 16, "quota's, model's and key's subcommands were listed")

    def test_no_subcommand_is_a_usage_error(self):
        for c in ("quota", "model", "key"):
            rc, out, err = run("kinfer", c)
            self.assertEqual(rc, 2)
            self.assertIn(f"kinfer {c} --help", err)


if __name__ == "__main__":
    unittest.main(verbosity=2)
