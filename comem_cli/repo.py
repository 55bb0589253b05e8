"""The user's git repository, seen from the host (gitpython).

Two jobs: list the files of the current working tree (tracked files and untracked, non-ignored
ones, as they are on disk now, uncommitted changes included) for the sandbox, and commit a patch
onto a new branch *without touching the current branch, index or working tree*: every write goes
through a temporary index file (GIT_INDEX_FILE), `git apply --cached`, `commit-tree` and
`update-ref`.
"""

from __future__ import annotations

import fnmatch
import os
import re
import tempfile
from pathlib import Path

from comem_cli.errors import UserError

# Untracked files with these names (matched on the file name) stay out of the sandbox and the
# snapshot commit unless --include-untracked-secrets: keys, credentials, environment files.
SECRET_PATTERNS = (".env", ".env.*", "*.env", "*.pem", "*.key", "*.p12", "*.pfx", "*.jks", "*.keystore", "*.kdbx",
                   "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*", "*credentials*", "*.secret", "*secrets.*",
                   ".netrc", ".pgpass", ".npmrc", ".pypirc", ".git-credentials", ".htpasswd", "*.tfvars",
                   "*.tfstate", "service-account*.json")


def looks_secret(path: str) -> bool:
    name = path.rsplit("/", 1)[-1].lower()
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in SECRET_PATTERNS)


class UserRepo:
    def __init__(self, path: str | Path):
        import git

        self.path = Path(path).expanduser().resolve()
        if not self.path.exists():
            raise UserError(f"repository path {path} does not exist")
        try:
            self.git_repo = git.Repo(self.path, search_parent_directories=False)
        except (git.InvalidGitRepositoryError, git.NoSuchPathError):
            raise UserError(f"{self.path} is not a git repository (run `git init` and commit first)") from None
        if self.git_repo.bare:
            raise UserError(f"{self.path} is a bare repository; point --repo at a working tree")
        try:
            self.head = self.git_repo.head.commit.hexsha
        except ValueError:
            raise UserError(f"{self.path} has no commits yet; commit something first") from None
        self.git = self.git_repo.git

    def working_files(self) -> list[str]:
        """Tracked files plus untracked files that .gitignore does not exclude."""
        out = self.git.ls_files("-z", "--cached", "--others", "--exclude-standard")
        return sorted({f for f in out.split("\0") if f})

    def untracked_secrets(self) -> list[str]:
        """Untracked, non-ignored files whose names look like secrets (see SECRET_PATTERNS)."""
        out = self.git.ls_files("-z", "--others", "--exclude-standard")
        return sorted(f for f in out.split("\0") if f and looks_secret(f))

    def origin_url(self) -> str | None:
        try:
            return self.git_repo.remotes.origin.url
        except (AttributeError, IndexError, ValueError):
            return None

    def branch_exists(self, branch: str) -> bool:
        return self.branch_commit(branch) is not None

    def branch_commit(self, branch: str) -> str | None:
        """The commit `branch` points at now, or None when there is no such branch."""
        import git

        try:
            return self.git.rev_parse("--verify", "--quiet", f"refs/heads/{branch}")
        except git.GitCommandError:
            return None

    def check_branch_name(self, branch: str) -> None:
        import git

        try:
            self.git.check_ref_format("--branch", branch)
        except git.GitCommandError:
            raise UserError(f"{branch!r} is not a valid branch name") from None

    def _identity(self) -> dict[str, str]:
        """comem authors the fix; the committer is the user when git knows who that is."""
        env = {"GIT_AUTHOR_NAME": "comem", "GIT_AUTHOR_EMAIL": "comem@localhost"}
        reader = self.git_repo.config_reader()
        if not (reader.has_option("user", "name") and reader.has_option("user", "email")):
            env |= {"GIT_COMMITTER_NAME": "comem", "GIT_COMMITTER_EMAIL": "comem@localhost"}
        return env

    def commit_patch(self, branch: str, patch: str, message: str, *, force: bool = False,
                     exclude: list[str] | None = None) -> str:
        """Create `branch` = HEAD (+ a snapshot commit of uncommitted changes, if any) + the patch.

        The snapshot commit exists because the sandbox saw the working tree, not HEAD: the patch
        applies to what the agent saw (files in `exclude`, never copied in, are not in it either).
        The patch text is written back as the bytes it was decoded from (surrogateescape). Returns the
        new branch's commit sha.
        """
        import git

        old = self.branch_commit(branch)
        if old and not force:
            raise UserError(f"branch {branch!r} already exists; pass --force to overwrite it or --branch NAME")
        with tempfile.TemporaryDirectory() as tmp:
            env = {"GIT_INDEX_FILE": os.path.join(tmp, "index"), **self._identity()}
            g = self.git
            g.read_tree(self.head, env=env)
            g.add("-A", env=env)
            for start in range(0, len(exclude or []), 100):
                g.rm("--cached", "-q", "--ignore-unmatch", "--", *exclude[start:start + 100],
                     env={**env, "GIT_LITERAL_PATHSPECS": "1"})
            snapshot_tree = g.write_tree(env=env)
            parent = self.head
            if snapshot_tree != self.git_repo.head.commit.tree.hexsha:
                parent = g.commit_tree(snapshot_tree, "-p", parent, "-m", "comem: uncommitted changes the fix was made on", env=env)
            patch_file = os.path.join(tmp, "patch.diff")
            data = patch.encode("utf-8", "surrogateescape")
            Path(patch_file).write_bytes(data if data.endswith(b"\n") else data + b"\n")
            try:
                g.apply("--cached", "--binary", "--whitespace=nowarn", patch_file, env=env)
            except git.GitCommandError as e:
                raise UserError(f"the patch does not apply to {self.path}: {str(e.stderr).strip()[:200]}") from None
            tree = g.write_tree(env=env)
            commit = g.commit_tree(tree, "-p", parent, "-m", message, env=env)
            self._set_branch(branch, commit, expected=old)
            return commit

    def _set_branch(self, branch: str, commit: str, *, expected: str | None) -> None:
        """Point `branch` at `commit` only if it still is what this run saw (`expected`; None: no such
        branch). One atomic `update-ref` with the old value, so two runs finishing together cannot both
        believe they made the branch: the second is refused and the branch keeps the first one's fix."""
        import git

        try:
            self.git.update_ref(f"refs/heads/{branch}", commit, expected or "")
        except git.GitCommandError as e:
            now = self.branch_commit(branch)
            if now != expected:
                what = "created" if expected is None else "deleted" if now is None else "moved"
                raise UserError(f"branch {branch!r} was {what} by someone else (another comem run?) while this run "
                                f"committed its fix; it was left as it is (--branch NAME to use another)") from None
            reason = " ".join(str(e.stderr).split()).removeprefix("stderr: ").strip("'")
            raise UserError(f"branch {branch!r} could not be set: {reason[:200]}") from None


def slugify(text: str, max_len: int = 40) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_len].rstrip("-") or "task"
