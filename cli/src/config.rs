//! One layered configuration for every binary: built-in defaults, then a TOML file
//! (`--config` / `$REWIND_CONFIG`, one table per binary: `[coordinator]`, `[worker]`, `[cli]`),
//! then `REWIND_*` environment variables, then flags. Keys are the long flag names. Unknown
//! tables and keys are errors. `--print-config` / `rewind config show` print the effective
//! settings with their source, secrets masked; `rewind config docs` writes
//! docs/configuration.md from the same definitions.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, Command, CommandFactory, FromArgMatches};

/// The tables a config file may have, one per binary.
pub const SECTIONS: [&str; 3] = ["coordinator", "worker", "cli"];

/// Settings not read from config files (they choose or print the file, or are per-job).
const NOT_CONFIGURABLE: [&str; 4] = ["config", "print-config", "help", "version"];

fn config_path(argv: &[OsString]) -> Option<PathBuf> {
    let mut it = argv.iter().skip(1);
    while let Some(a) = it.next() {
        let a = a.to_string_lossy();
        if a == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(p) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(p));
        }
    }
    std::env::var_os("REWIND_CONFIG").map(PathBuf::from)
}

/// The `[section]` table of a config file, as flag name -> value text.
pub fn read_section(path: &Path, section: &str) -> Result<BTreeMap<String, String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("invalid --config {}: {e}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| format!("invalid --config {}: {e}", path.display()))?;
    for (key, value) in &table {
        if !SECTIONS.contains(&key.as_str()) || !value.is_table() {
            return Err(format!(
                "invalid --config {}: unknown key {key}; settings go in the tables {}",
                path.display(),
                SECTIONS.map(|s| format!("[{s}]")).join(", ")
            ));
        }
    }
    let mut out = BTreeMap::new();
    if let Some(toml::Value::Table(t)) = table.get(section) {
        for (key, value) in t {
            let text = match value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Array(items) => items
                    .iter()
                    .map(|i| match i {
                        toml::Value::String(s) => s.clone(),
                        toml::Value::Integer(i) => i.to_string(),
                        toml::Value::Float(f) => f.to_string(),
                        toml::Value::Boolean(b) => b.to_string(),
                        other => format!("{other:?}"),
                    })
                    .collect::<Vec<_>>()
                    .join(","),
                other => {
                    return Err(format!(
                        "invalid --config {}: [{section}] {key} = {other:?}: not a plain value",
                        path.display()
                    ));
                }
            };
            out.insert(key.clone(), text);
        }
    }
    Ok(out)
}

/// Applies file values as defaults of the matching args (in `cmd` and its subcommands).
fn apply(
    mut cmd: Command,
    values: &BTreeMap<String, String>,
    section: &str,
    path: &Path,
) -> Result<Command, String> {
    for (key, value) in values {
        let leaked: &'static str = Box::leak(value.clone().into_boxed_str());
        let mut found = false;
        let has = |c: &Command| {
            c.get_arguments().any(|a| {
                a.get_long() == Some(key.as_str()) && !NOT_CONFIGURABLE.contains(&key.as_str())
            })
        };
        if has(&cmd) {
            let id = cmd
                .get_arguments()
                .find(|a| a.get_long() == Some(key.as_str()))
                .map(|a| a.get_id().clone())
                .ok_or_else(|| format!("unknown key {key}"))?;
            cmd = cmd.mut_arg(id, |a| a.default_value(leaked).required(false));
            found = true;
        }
        let subs: Vec<String> = cmd
            .get_subcommands()
            .filter(|s| has(s))
            .map(|s| s.get_name().to_string())
            .collect();
        for sub in subs {
            cmd = cmd.mut_subcommand(sub, |s| {
                let id = s
                    .get_arguments()
                    .find(|a| a.get_long() == Some(key.as_str()))
                    .map(|a| a.get_id().clone());
                match id {
                    Some(id) => s.mut_arg(id, |a| a.default_value(leaked).required(false)),
                    None => s,
                }
            });
            found = true;
        }
        if !found {
            return Err(format!(
                "invalid --config {}: [{section}] has no setting {key} (see docs/configuration.md)",
                path.display()
            ));
        }
    }
    Ok(cmd)
}

/// Parses `T` with the layers; on a bad file or bad arguments, says why and exits 2. Handles
/// `--print-config` (prints and exits 0) for commands that have it.
pub fn parse<T: clap::Parser>(section: &str) -> T {
    parse_from(section, std::env::args_os().collect())
}

/// [`parse`] with the arguments given: `rewind coordinator …` and `rewind worker …` pass theirs
/// with the subcommand taken off (argv[0] is then `rewind coordinator`).
pub fn parse_from<T: clap::Parser>(section: &str, argv: Vec<OsString>) -> T {
    match layered::<T>(section, &argv) {
        Ok((args, matches, cmd, file)) => {
            if matches.try_get_one::<bool>("print_config").ok().flatten() == Some(&true) {
                print!("{}", show(section, &cmd, &matches, &file));
                std::process::exit(0);
            }
            args
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    }
}

type Parsed<T> = (T, ArgMatches, Command, BTreeMap<String, String>);

/// The layered parse itself (testable: argv given).
pub fn layered<T: CommandFactory + FromArgMatches>(
    section: &str,
    argv: &[OsString],
) -> Result<Parsed<T>, String> {
    let mut cmd = T::command();
    let mut file = BTreeMap::new();
    if let Some(path) = config_path(argv) {
        file = read_section(&path, section)?;
        cmd = apply(cmd, &file, section, &path)?;
    }
    let matches = match cmd.clone().try_get_matches_from(argv) {
        Ok(m) => m,
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            e.exit()
        }
        Err(e) => {
            return Err(e
                .render()
                .to_string()
                .trim()
                .trim_start_matches("error: ")
                .to_string());
        }
    };
    let args = T::from_arg_matches(&matches).map_err(|e| e.to_string())?;
    Ok((args, matches, cmd, file))
}

/// The effective settings `cmd` would run with, given `argv`, the environment and the config
/// file; missing required settings are shown as unset instead of failing.
pub fn effective(section: &str, cmd: Command, argv: &[OsString]) -> Result<String, String> {
    let mut cmd = cmd.ignore_errors(true);
    let mut file = BTreeMap::new();
    if let Some(path) = config_path(argv) {
        file = read_section(&path, section)?;
        cmd = apply(cmd, &file, section, &path)?;
    }
    let matches = cmd
        .clone()
        .try_get_matches_from(argv)
        .map_err(|e| e.to_string())?;
    Ok(show(section, &cmd, &matches, &file))
}

/// Settings whose value is itself a secret: role external ids, and anything named like a token,
/// secret or password that is not a path to one (`--auth-token-file`, `--etcd-password-file`,
/// `--token-file` name files) or a reference (`--kafka-secret` takes `KEY=env:NAME|file:PATH`).
fn secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k.ends_with("external-id")
        || ((k.contains("token") || k.contains("secret") || k.contains("password"))
            && !k.ends_with("-file")
            && k != "kafka-secret")
}

/// One value as shown: a `--kafka-option` that carries a secret keeps its key only.
fn shown(key: &str, value: &str) -> String {
    if key == "kafka-option"
        && let Some((k, _)) = value.split_once('=')
        && rewind_common::secret::kafka_secret_key(k)
    {
        return format!("{k}={}", rewind_common::secret::MASK);
    }
    value.to_string()
}

/// The effective settings of one command, as TOML with the source of each value.
pub fn show(
    section: &str,
    cmd: &Command,
    matches: &ArgMatches,
    file: &BTreeMap<String, String>,
) -> String {
    let mut out = format!("[{section}]\n");
    let (cmd, matches) = match matches.subcommand() {
        Some((name, sub)) => (cmd.find_subcommand(name).unwrap_or(cmd), sub),
        None => (cmd, matches),
    };
    let mut args: Vec<&clap::Arg> = cmd.get_arguments().collect();
    args.sort_by_key(|a| a.get_long());
    for arg in args {
        let Some(key) = arg.get_long() else { continue };
        if NOT_CONFIGURABLE.contains(&key) {
            continue;
        }
        let id = arg.get_id().as_str();
        let values: Vec<String> = matches
            .get_raw(id)
            .map(|v| v.map(|s| s.to_string_lossy().to_string()).collect())
            .unwrap_or_default();
        let source = match matches.value_source(id) {
            Some(ValueSource::CommandLine) => "flag",
            Some(ValueSource::EnvVariable) => "env",
            Some(ValueSource::DefaultValue) if file.contains_key(key) => "file",
            Some(ValueSource::DefaultValue) => "default",
            _ => "unset",
        };
        let value = if values.is_empty() {
            "# (unset)".to_string()
        } else if secret(key) {
            format!("{:?}", rewind_common::secret::MASK)
        } else {
            let values: Vec<String> = values.iter().map(|v| shown(key, v)).collect();
            format!("{:?}", values.join(","))
        };
        if values.is_empty() {
            out.push_str(&format!("# {key} {value}\n"));
        } else {
            out.push_str(&format!("{key} = {value}  # {source}\n"));
        }
    }
    out
}

/// docs/configuration.md, generated from the commands' definitions.
pub fn docs(commands: &[(&str, Command)]) -> String {
    let mut out = String::from(
        "# Configuration\n\n\
         Generated by `rewind config docs` from the binaries' definitions (a test checks that this\n\
         file is current). Every setting can be given, from lowest to highest precedence, as the\n\
         built-in default, in a TOML file (`--config PATH` or `$REWIND_CONFIG`; one table per\n\
         binary: `[coordinator]`, `[worker]`, `[cli]`; keys are the flag names), as the\n\
         environment variable shown, or as the flag. Unknown tables and keys are errors.\n\
         `--print-config` (services) and `rewind config show` print the effective settings and\n\
         where each comes from, with secrets masked. Logging is `REWIND_LOG` (a tracing filter).\n",
    );
    for (section, cmd) in commands {
        out.push_str(&format!("\n## [{section}] — `{}`\n\n", cmd.get_name()));
        out.push_str("| key | env | default | meaning |\n|---|---|---|---|\n");
        let mut rows = BTreeMap::new();
        let mut collect = |c: &Command, sub: Option<&str>| {
            for arg in c.get_arguments() {
                let Some(key) = arg.get_long() else { continue };
                if NOT_CONFIGURABLE.contains(&key) || arg.is_positional() {
                    continue;
                }
                let env = arg
                    .get_env()
                    .map(|e| format!("`{}`", e.to_string_lossy()))
                    .unwrap_or_default();
                let default = arg
                    .get_default_values()
                    .iter()
                    .map(|v| format!("`{}`", v.to_string_lossy()))
                    .collect::<Vec<_>>()
                    .join(", ");
                let help = arg
                    .get_help()
                    .map(|h| h.to_string().replace('|', "\\|").replace('\n', " "))
                    .unwrap_or_default();
                let entry = rows
                    .entry(key.to_string())
                    .or_insert((env, default, help, Vec::new()));
                if let Some(sub) = sub {
                    entry.3.push(sub.to_string());
                }
            }
        };
        collect(cmd, None);
        for sub in cmd.get_subcommands() {
            collect(sub, Some(sub.get_name()));
        }
        for (key, (env, default, help, subs)) in rows {
            let used = if subs.is_empty() {
                String::new()
            } else {
                format!(" (`{}`)", subs.join("`, `"))
            };
            out.push_str(&format!("| `{key}` | {env} | {default} | {help}{used} |\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[arg(long, env = "REWIND_TEST_CONFIG_A")]
        a: String,
        #[arg(long, default_value_t = 1)]
        b: u32,
        #[arg(long)]
        c: bool,
        #[arg(long, env = "REWIND_CONFIG_TEST_FILE")]
        config: Option<PathBuf>,
    }

    fn file(text: &str) -> (tempfile::NamedTempFile, OsString) {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        let p = f.path().as_os_str().to_owned();
        (f, p)
    }

    fn argv(items: &[&str], config: &OsString) -> Vec<OsString> {
        let mut v: Vec<OsString> = vec!["t".into(), "--config".into(), config.clone()];
        v.extend(items.iter().map(OsString::from));
        v
    }

    #[test]
    fn file_overrides_defaults_and_flags_override_the_file() {
        let (_f, p) = file("[worker]\na = \"from-file\"\nb = 7\nc = true\n");
        let (t, m, cmd, f) = layered::<T>("worker", &argv(&[], &p)).unwrap();
        assert_eq!((t.a.as_str(), t.b, t.c), ("from-file", 7, true));
        let shown = show("worker", &cmd, &m, &f);
        assert!(shown.contains("b = \"7\"  # file"), "{shown}");
        let (t, ..) = layered::<T>("worker", &argv(&["--b", "9", "--a", "x"], &p)).unwrap();
        assert_eq!((t.a.as_str(), t.b), ("x", 9));
        // Another binary's table is not read.
        let (t, ..) = layered::<T>("coordinator", &argv(&["--a", "y"], &p)).unwrap();
        assert_eq!((t.a.as_str(), t.b, t.c), ("y", 1, false));
    }

    #[test]
    fn unknown_tables_keys_and_values_are_errors() {
        for (text, needle) in [
            ("a = \"x\"\n", "unknown key a"),
            ("[workers]\na = \"x\"\n", "unknown key workers"),
            ("[worker]\nzzz = 1\n", "has no setting zzz"),
            (
                "[worker]\nconfig = \"other.toml\"\n",
                "has no setting config",
            ),
            ("[worker]\na = { x = 1 }\n", "not a plain value"),
            ("[worker\n", "invalid --config"),
        ] {
            let (_f, p) = file(text);
            let e = layered::<T>("worker", &argv(&[], &p)).unwrap_err();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
        let missing: OsString = "/nonexistent/rewind.toml".into();
        assert!(layered::<T>("worker", &argv(&[], &missing)).is_err());
    }

    #[test]
    fn secrets_are_masked() {
        assert!(secret("source-external-id"));
        assert!(secret("dest-external-id"));
        assert!(secret("auth-token"));
        assert!(!secret("auth-token-file"));
        assert!(!secret("etcd-password-file"));
        assert!(!secret("kafka-secret"));
        assert!(!secret("etcd"));
        assert_eq!(
            shown("kafka-option", "sasl.password=hunter2"),
            "sasl.password=****"
        );
        assert_eq!(
            shown("kafka-option", "security.protocol=SASL_SSL"),
            "security.protocol=SASL_SSL"
        );
    }
}
