//! `build_and_push.sh --dry-run` on a PATH without aws or docker: it prints the ECR repository,
//! login, build, tag and push commands it would run, for the account and region it is given
//! (or the ACCOUNT placeholder when AWS cannot be asked), and the image URI last.

use std::path::Path;
use std::process::{Command, Output};

use anyhow::{ensure, Context, Result};

/// A directory holding links to only the tools the script needs in a dry run.
fn minimal_path_dir() -> Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    let path = std::env::var_os("PATH").context("PATH is not set")?;
    for tool in ["bash", "git", "dirname", "sed"] {
        let found = std::env::split_paths(&path)
            .map(|dir| dir.join(tool))
            .find(|candidate| candidate.is_file())
            .with_context(|| format!("{tool} is not on PATH"))?;
        std::os::unix::fs::symlink(&found, dir.path().join(tool))?;
    }
    Ok(dir)
}

fn dry_run(bin_dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Result<Output> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("build_and_push.sh");
    let output = Command::new(bin_dir.join("bash"))
        .arg(&script)
        .arg("--dry-run")
        .args(args)
        .env_clear()
        .env("PATH", bin_dir)
        .envs(env.iter().copied())
        .output()?;
    ensure!(
        output.status.success(),
        "build_and_push.sh --dry-run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output)
}

/// The printed lines, without printf's trailing spaces.
fn lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| line.trim_end().to_owned())
        .collect()
}

/// The commit tag of the URI on the last line (`REGISTRY/NAME:COMMIT`), checked for shape.
fn commit_tag(lines: &[String], registry_and_name: &str) -> Result<String> {
    let last = lines.last().context("no output")?;
    let commit = last
        .strip_prefix(&format!("{registry_and_name}:"))
        .with_context(|| format!("last line {last:?} is not {registry_and_name}:COMMIT"))?;
    let hex = commit.strip_suffix("-dirty").unwrap_or(commit);
    ensure!(
        commit == "nogit" || (hex.len() == 12 && hex.chars().all(|c| c.is_ascii_hexdigit())),
        "commit tag {commit:?} is neither a 12-digit commit (with -dirty) nor nogit"
    );
    Ok(commit.to_owned())
}

#[test]
fn build_and_push_dry_run_prints_every_command_without_aws_or_docker() -> Result<()> {
    let bin_dir = minimal_path_dir()?;
    let output = dry_run(
        bin_dir.path(),
        &[
            ("AWS_ACCOUNT_ID", "123456789012"),
            ("AWS_REGION", "eu-west-1"),
        ],
        &[
            "wick-ci",
            "--",
            "--target",
            "prebuilt",
            "--build-arg",
            "WICK_BINARY=target/release/wick",
        ],
    )?;
    let registry = "123456789012.dkr.ecr.eu-west-1.amazonaws.com";
    let uri = format!("{registry}/wick-ci");
    let printed = lines(&output);
    let commit = commit_tag(&printed, &uri)?;
    let expected = [
        "aws ecr describe-repositories --region eu-west-1 --repository-names wick-ci >/dev/null 2>&1 \
         || aws ecr create-repository --region eu-west-1 --repository-name wick-ci >/dev/null"
            .to_owned(),
        format!(
            "aws ecr get-login-password --region eu-west-1 | docker login --username AWS \
             --password-stdin {registry}"
        ),
        format!(
            "docker build --platform linux/amd64 --build-arg REVISION={commit} -t wick-ci:latest \
             -t wick-ci:{commit} --target prebuilt --build-arg WICK_BINARY=target/release/wick ."
        ),
        format!("docker tag wick-ci:latest {uri}:latest"),
        format!("docker push {uri}:latest"),
        format!("docker tag wick-ci:{commit} {uri}:{commit}"),
        format!("docker push {uri}:{commit}"),
        format!("{uri}:{commit}"),
    ];
    assert_eq!(printed, expected);
    Ok(())
}

#[test]
fn build_and_push_dry_run_without_an_account_prints_the_placeholder() -> Result<()> {
    let bin_dir = minimal_path_dir()?;
    // No AWS_ACCOUNT_ID and no aws CLI: the account cannot be asked; no region either.
    let output = dry_run(bin_dir.path(), &[], &["wick"])?;
    let printed = lines(&output);
    let uri = "ACCOUNT.dkr.ecr.us-west-2.amazonaws.com/wick";
    let commit = commit_tag(&printed, uri)?;
    assert!(
        printed.contains(&format!("docker push {uri}:{commit}")),
        "no push of {uri}:{commit} in {printed:#?}"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("printing ACCOUNT"),
        "no warning about the missing account: {stderr}"
    );
    Ok(())
}
