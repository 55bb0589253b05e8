"""The host side of git: the working-tree snapshot and branch creation without touching the checkout."""

from __future__ import annotations

import pytest

from comem_cli.errors import UserError
from comem_cli.repo import UserRepo
from tests.conftest import git

PATCH = '''diff --git a/words.py b/words.py
--- a/words.py
+++ b/words.py
@@ -3,4 +3,4 @@
 
 def count_words(text):
     """Number of words in `text`, words being separated by any whitespace."""
-    return len(text.split(" "))
+    return len(text.split())
diff --git a/new_file.txt b/new_file.txt
new file mode 100644
--- /dev/null
+++ b/new_file.txt
@@ -0,0 +1 @@
+hello
'''


def test_working_files_are_tracked_plus_untracked_not_ignored(words_repo):
    files = UserRepo(words_repo).working_files()
    assert {"words.py", "test_words.py", ".gitignore", "NOTES.md", "ISSUE.md"} <= set(files)
    assert "ignored.txt" not in files and not any(f.startswith(".git/") for f in files)


def test_commit_patch_leaves_checkout_alone(words_repo):
    (words_repo / "test_words.py").write_text((words_repo / "test_words.py").read_text() + "\n# local edit\n")
    git(words_repo, "add", "test_words.py")  # something staged in the user's index
    (words_repo / "NOTES.md").write_text("changed after staging\n")
    index_before = (words_repo / ".git" / "index").read_bytes()
    status_before = git(words_repo, "status", "--porcelain")
    repo = UserRepo(words_repo)
    head = repo.head
    sha = repo.commit_patch("comem/x", PATCH, "fix it")
    # Branch = HEAD -> snapshot of uncommitted changes -> fix.
    assert git(words_repo, "rev-parse", "comem/x").strip() == sha
    parents = git(words_repo, "log", "--format=%s", "comem/x").splitlines()
    assert parents == ["fix it", "comem: uncommitted changes the fix was made on", "initial"]
    assert git(words_repo, "show", "comem/x:new_file.txt") == "hello\n"
    assert "text.split()" in git(words_repo, "show", "comem/x:words.py")
    assert "# local edit" in git(words_repo, "show", "comem/x:test_words.py")
    assert git(words_repo, "show", "comem/x:NOTES.md") == "changed after staging\n"
    assert git(words_repo, "log", "-1", "--format=%an", "comem/x").strip() == "comem"
    # Nothing of the user's moved.
    assert git(words_repo, "rev-parse", "HEAD").strip() == head
    assert (words_repo / ".git" / "index").read_bytes() == index_before
    assert git(words_repo, "status", "--porcelain") == status_before
    assert not (words_repo / "new_file.txt").exists()


def test_clean_tree_gets_a_single_commit_and_branch_refusal(words_repo):
    for f in ("NOTES.md", "ISSUE.md"):
        (words_repo / f).unlink()
    repo = UserRepo(words_repo)
    repo.commit_patch("comem/y", PATCH, "fix")
    assert git(words_repo, "log", "--format=%s", "comem/y").splitlines() == ["fix", "initial"]
    with pytest.raises(UserError, match="already exists"):
        repo.commit_patch("comem/y", PATCH, "again")
    repo.commit_patch("comem/y", PATCH, "again", force=True)
    assert git(words_repo, "log", "-1", "--format=%s", "comem/y").strip() == "again"
    with pytest.raises(UserError, match="does not apply"):
        repo.commit_patch("comem/z", PATCH.replace("count_words(text)", "other(text)"), "bad")
    with pytest.raises(UserError, match="not a valid branch name"):
        repo.check_branch_name("bad..name")
