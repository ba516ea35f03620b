#!/usr/bin/python3
"""docs/models.md's guide, run as written: its fenced blocks marked `guide`
(and `guide-torch` when python3-torch is installed) are extracted and run in
order in one empty directory against a real stack (redis-server, the dev
broker, a worker reading the registry; kinfer_stack.py), `sh` blocks with
bash -e, `python` blocks with Debian's /usr/bin/python3.  The guide's own
asserts compare the served outputs with scikit-learn's and PyTorch's within
1e-5; a block marked `text guide-expect COMMAND` is what COMMAND must print
on stderr when it is refused (exit 1).  So the guide cannot rot.

    KINFER_BIN=build /usr/bin/python3 tests/py/test_models_guide.py
"""
import os
import re
import shlex
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kinfer_stack import PYTHON, REPO, Stack  # noqa: E402

GUIDE = os.path.join(REPO, "docs", "models.md")
FENCE = re.compile(r"^```(\w+) (guide(?:-torch|-expect)?)\b ?([^\n]*)\n(.*?)^```$", re.M | re.S)

try:
    import torch  # noqa: F401
    HAVE_TORCH = True
except ImportError:
    HAVE_TORCH = False


def blocks():
    with open(GUIDE) as f:
        text = f.read()
    return [(m.group(1), m.group(2), m.group(3).strip(), m.group(4)) for m in FENCE.finditer(text)]


class ModelsGuideTest(unittest.TestCase):
    def test_guide_runs(self):
        bs = blocks()
        kinds = [(lang, tag) for lang, tag, _, _ in bs]
        # the guide still walks the whole path: fit, convert, push, submit, compare
        self.assertGreaterEqual(kinds.count(("python", "guide")), 4, kinds)
        self.assertGreaterEqual(kinds.count(("sh", "guide")), 2, kinds)
        self.assertGreaterEqual(kinds.count(("python", "guide-torch")), 2, kinds)
        joined = "\n".join(b[3] for b in bs)
        for step in ("kinfer-convert sklearn", "kinfer model push", "kinfer submit",
                     "predict_proba", "kinfer-convert torch", "< 1e-5"):
            self.assertIn(step, joined)

        s = Stack().start()
        ran = []
        try:
            for i, (lang, tag, arg, body) in enumerate(bs):
                if tag == "guide-torch" and not HAVE_TORCH:
                    continue
                where = "docs/models.md guide block %d (%s %s)" % (i, lang, tag)
                if tag == "guide-expect":
                    rc, _, err = s.run(shlex.split(arg), check=False)
                    self.assertEqual(rc, 1, "%s: %s exited %d" % (where, arg, rc))
                    self.assertEqual(err.strip(), body.strip(), where)
                elif lang == "python":
                    rc, out, err = s.run([PYTHON, "-c", body], check=False)
                    self.assertEqual(rc, 0, "%s failed:\n%s%s" % (where, out, err))
                elif lang == "sh":
                    rc, out, err = s.run(["bash", "-e", "-o", "pipefail", "-c", body],
                                         check=False)
                    self.assertEqual(rc, 0, "%s failed:\n%s%s" % (where, out, err))
                else:
                    self.fail("%s: no way to run a %s block" % (where, lang))
                ran.append(tag)
                sys.stderr.write(out if lang != "text" else "")
        except BaseException:
            sys.stderr.write(s.worker_log_text())
            raise
        finally:
            rc = s.stop()
            s.cleanup()
        self.assertEqual(rc, 0, "worker exit status on SIGTERM")
        if not HAVE_TORCH:
            sys.stderr.write("test_models_guide: python3-torch not installed: the guide-torch "
                             "blocks were skipped\n")
        self.assertGreaterEqual(len(ran), 9)


if __name__ == "__main__":
    unittest.main(verbosity=2)
