//! README.md's Settings table lists every flag and environment variable the command line
//! defines (from clap's own definition of `wick`, so a new flag cannot go undocumented), each on
//! a row naming the commands that take it.

use clap::CommandFactory;
use wick::cli::Cli;

/// The rows of the Settings table: (flag cell, environment variable cell, commands cell).
fn settings_rows() -> Vec<(String, String, String)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md is readable");
    let section = readme
        .split("\n## Settings\n")
        .nth(1)
        .expect("README.md has a `## Settings` section");
    let section = section.split("\n## ").next().unwrap_or(section);
    section
        .lines()
        .filter(|line| line.starts_with('|') && !line.starts_with("|---"))
        .skip(1) // the header row
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            assert!(cells.len() >= 6, "Settings row has too few cells: {line}");
            (cells[1].into(), cells[2].into(), cells[3].into())
        })
        .collect()
}

#[test]
fn every_flag_and_variable_of_every_command_is_in_the_readme_settings_table() {
    let rows = settings_rows();
    assert!(
        rows.len() > 30,
        "the Settings table looks truncated: {} rows",
        rows.len()
    );
    let cli = Cli::command();
    let global: Vec<_> = cli.get_arguments().map(|arg| ("all", arg)).collect();
    let mut missing = Vec::new();
    let mut checked = 0;
    for sub in cli.get_subcommands() {
        let args = sub.get_arguments().map(|arg| (sub.get_name(), arg));
        for (command, arg) in args.chain(global.iter().copied()) {
            let Some(long) = arg.get_long() else {
                continue; // positional arguments are inputs, not settings
            };
            if long == "help" || long == "version" {
                continue;
            }
            let flag = format!("`--{long}`");
            let env = arg
                .get_env()
                .map(|v| format!("`{}`", v.to_string_lossy()))
                .unwrap_or_default();
            let documented = rows.iter().any(|(flag_cell, env_cell, commands)| {
                *flag_cell == flag
                    && env_cell.contains(&env)
                    && (commands == "all"
                        || commands
                            .split(", ")
                            .any(|c| c == command || c == sub.get_name()))
            });
            checked += 1;
            if !documented {
                missing.push(format!("wick {} {flag} {env}", sub.get_name()));
            }
        }
    }
    assert!(
        checked > 40,
        "only {checked} flags found: clap's definition changed shape"
    );
    missing.dedup();
    assert!(
        missing.is_empty(),
        "README.md's Settings table lacks a row (flag, variable, command) for: {missing:#?}"
    );
}

#[test]
fn the_environment_variables_read_outside_clap_are_in_the_readme_settings_table() {
    let rows = settings_rows();
    // Read by src/serve/config.rs (aliases) and src/telemetry.rs, not declared to clap.
    for variable in [
        "MODEL_SERVER_WORKERS",
        "MODEL_SERVER_TIMEOUT",
        "SAGEMAKER_MODEL_SERVER_TIMEOUT_SECONDS",
        "SAGEMAKER_CONTAINER_LOG_LEVEL",
        "RUST_LOG",
    ] {
        let quoted = format!("`{variable}`");
        assert!(
            rows.iter().any(|(_, env, _)| env.contains(&quoted)),
            "README.md's Settings table does not mention {variable}"
        );
    }
}
