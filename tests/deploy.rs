//! deploy/kubernetes and deploy/container, checked as far as this machine allows (no
//! Kubernetes cluster, no container engine): the manifests pass strict validation against the
//! Kubernetes OpenAPI schemas (kubernetes-validate, offline), the drain hook is wired to the
//! names handover's config uses, that config passes `handover check`, the ngircd start script
//! writes configs real ngircd accepts, and the Containerfiles are well-formed and copy files
//! that exist.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const BIN: &str = env!("CARGO_BIN_EXE_handover");
const MANIFESTS: [&str; 2] = ["handover.yaml", "irc-backend.yaml"];

fn venv(tool: &str) -> PathBuf {
    let path = Path::new(ROOT).join("venv/bin").join(tool);
    assert!(
        path.exists(),
        "{} is missing: run scripts/install-test-deps.sh",
        path.display()
    );
    path
}

fn manifest(name: &str) -> PathBuf {
    Path::new(ROOT).join("deploy/kubernetes").join(name)
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("handover-deploy-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Every document of every manifest, parsed by PyYAML, as JSON.
fn documents() -> Vec<Value> {
    let mut docs = Vec::new();
    for name in MANIFESTS {
        let out = Command::new(venv("python"))
            .args([
                "-c",
                "import json, sys, yaml; \
                 print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
            ])
            .arg(manifest(name))
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {out:?}");
        let parsed: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        docs.extend(parsed.into_iter().filter(|d| !d.is_null()));
    }
    docs
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn validate(files: &[PathBuf]) -> (bool, String) {
    let out = Command::new(venv("kubernetes-validate"))
        .args(["--strict", "--quiet"])
        .args(files)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

#[test]
fn manifests_match_the_kubernetes_schemas() {
    let files: Vec<PathBuf> = MANIFESTS.iter().map(|m| manifest(m)).collect();
    let (ok, said) = validate(&files);
    assert!(ok, "kubernetes-validate --strict:\n{said}");
    // Strict means a misspelt field fails.
    let dir = temp_dir("schema");
    let text = std::fs::read_to_string(manifest("irc-backend.yaml")).unwrap();
    let broken = dir.join("broken.yaml");
    std::fs::write(
        &broken,
        text.replace(
            "terminationGracePeriodSeconds",
            "terminationGracePeriodSecond",
        ),
    )
    .unwrap();
    let (ok, said) = validate(&[broken]);
    assert!(!ok, "a misspelt field passed:\n{said}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn backend_pods_drain_themselves_before_they_stop() {
    let docs = documents();
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    for kind in ["ConfigMap", "Deployment", "Service", "StatefulSet"] {
        assert!(kinds.contains(&kind), "no {kind}: {kinds:?}");
    }
    let irc = find(&docs, "StatefulSet", "irc");
    let pod = &irc["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let pre_stop: Vec<&str> = container["lifecycle"]["preStop"]["exec"]["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        pre_stop,
        [
            "/usr/bin/handover",
            "drain",
            "$(POD_NAME)",
            "--wait",
            "--admin",
            "http://handover-admin:9797"
        ]
    );
    let env = container["env"].as_array().unwrap();
    let var = |name: &str| env.iter().find(|e| e["name"] == name).cloned();
    assert_eq!(
        var("POD_NAME").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    // The token the admin API demands is the one the hook sends.
    assert_eq!(
        var("HANDOVER_ADMIN_TOKEN").unwrap()["valueFrom"]["secretKeyRef"]["name"],
        "handover-admin-token"
    );
    let post_start = container["lifecycle"]["postStart"]["exec"]["command"].to_string();
    assert!(post_start.contains("handover undrain"), "{post_start}");
    assert!(pod["terminationGracePeriodSeconds"].as_u64().unwrap() >= 60);

    // The admin Service the hook calls exists and reaches handover's admin port.
    let admin = find(&docs, "Service", "handover-admin");
    assert_eq!(admin["spec"]["ports"][0]["port"], 9797);
    let deployment = find(&docs, "Deployment", "handover");
    assert_eq!(
        admin["spec"]["selector"],
        deployment["spec"]["template"]["metadata"]["labels"]
    );

    // Every pod of the StatefulSet is a backend of that name at its headless address.
    let config = handover_toml(&docs);
    let replicas = irc["spec"]["replicas"].as_u64().unwrap();
    let service = irc["spec"]["serviceName"].as_str().unwrap();
    for i in 0..replicas {
        let entry = format!("name = \"irc-{i}\"\naddress = \"irc-{i}.{service}:6667\"");
        assert!(config.contains(&entry), "{entry} not in:\n{config}");
    }
}

fn handover_toml(docs: &[Value]) -> String {
    find(docs, "ConfigMap", "handover-config")["data"]["handover.toml"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The ConfigMap's config is one `handover check` accepts (with the token file that the
/// Secret would mount), and its drain pacing fits ngircd's listen backlog of 10.
#[test]
fn the_configmap_config_passes_check() {
    let docs = documents();
    let dir = temp_dir("config");
    let token = dir.join("admin.token");
    std::fs::write(&token, "test-token\n").unwrap();
    let text =
        handover_toml(&docs).replace("/etc/handover/token/admin.token", token.to_str().unwrap());
    let config = dir.join("handover.toml");
    std::fs::write(&config, &text).unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let parsed: toml::Value = toml::from_str(&shown).unwrap();
    let max = parsed["migration"]["max_concurrent"].as_integer().unwrap();
    assert!(max <= 10, "max_concurrent {max} > ngircd's backlog of 10");
    std::fs::remove_dir_all(dir).ok();
}

/// The backends' start script, run as each kind of pod, writes configs that the real ngircd
/// accepts (`--configtest` reports unknown keys on stdout and still exits 0, so its output is
/// read too).
#[test]
fn the_ngircd_start_script_writes_valid_configs() {
    let docs = documents();
    let script = find(&docs, "ConfigMap", "irc-scripts")["data"]["start.sh"]
        .as_str()
        .unwrap()
        .to_string();
    let dir = temp_dir("ngircd");
    let path = dir.join("start.sh");
    std::fs::write(&path, script).unwrap();
    for pod in ["irc-0", "irc-2", "irc-hub-0"] {
        let conf = dir.join(format!("{pod}.conf"));
        let out = Command::new("sh")
            .arg(&path)
            .env("POD_NAME", pod)
            .env("LINK_PASSWORD", "link-secret")
            .env("NGIRCD_CONF", &conf)
            .env("NGIRCD_CONFTEST", "1")
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{pod}: {said}");
        assert!(
            !said.contains(", line ") && !said.to_lowercase().contains("error"),
            "{pod}: ngircd complains:\n{said}"
        );
        let written = std::fs::read_to_string(&conf).unwrap();
        assert!(
            written.contains(&format!("Name = {pod}.irc.example.net")),
            "{written}"
        );
        assert!(written.contains("MaxConnectionsIP = 0"), "{written}");
        let links = written.matches("[Server]").count();
        assert_eq!(links, if pod == "irc-hub-0" { 3 } else { 1 }, "{written}");
    }
    std::fs::remove_dir_all(dir).ok();
}

const INSTRUCTIONS: [&str; 18] = [
    "FROM",
    "RUN",
    "CMD",
    "LABEL",
    "EXPOSE",
    "ENV",
    "ADD",
    "COPY",
    "ENTRYPOINT",
    "VOLUME",
    "USER",
    "WORKDIR",
    "ARG",
    "ONBUILD",
    "STOPSIGNAL",
    "HEALTHCHECK",
    "SHELL",
    "MAINTAINER",
];

/// Instructions of a Containerfile, continuation lines joined.
fn instructions(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if current.is_empty() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        current.push_str(line.trim_end_matches('\\'));
        current.push(' ');
        if !line.ends_with('\\') {
            let (word, rest) = current.trim().split_once(' ').unwrap();
            out.push((word.to_string(), rest.trim().to_string()));
            current.clear();
        }
    }
    assert!(
        current.is_empty(),
        "{}: dangling continuation",
        path.display()
    );
    out
}

#[test]
fn containerfiles_are_well_formed() {
    for name in ["Containerfile", "ngircd.Containerfile"] {
        let path = Path::new(ROOT).join("deploy/container").join(name);
        let steps = instructions(&path);
        for (word, _) in &steps {
            assert!(INSTRUCTIONS.contains(&word.as_str()), "{name}: {word}");
        }
        // Files copied from the build context exist (the context is the repository root).
        for (_, args) in steps.iter().filter(|(w, _)| w == "COPY") {
            if args.starts_with("--from") {
                continue;
            }
            let parts: Vec<&str> = args.split_whitespace().collect();
            for source in &parts[..parts.len() - 1] {
                assert!(
                    Path::new(ROOT).join(source).exists(),
                    "{name}: COPY {source}"
                );
            }
        }
        let last_from = steps.iter().rev().find(|(w, _)| w == "FROM").unwrap();
        assert_eq!(
            last_from.1, "docker.io/library/debian:bookworm-slim",
            "{name}"
        );
    }
    let steps = instructions(&Path::new(ROOT).join("deploy/container/Containerfile"));
    let has = |word: &str, args: &str| steps.iter().any(|(w, a)| w == word && a.contains(args));
    assert!(has("FROM", "AS build"));
    assert!(has("RUN", "cargo build --release --locked"));
    assert!(has(
        "COPY",
        "--from=build /src/target/release/handover /usr/bin/handover"
    ));
    assert!(has("STOPSIGNAL", "SIGTERM"));
    assert!(has("USER", "10001"));
    assert!(has(
        "CMD",
        r#"["serve", "--config", "/etc/handover/handover.toml"]"#
    ));
    // The build context leaves out what is big and local.
    let ignore = std::fs::read_to_string(Path::new(ROOT).join(".dockerignore")).unwrap();
    for entry in ["target", "venv", ".git"] {
        assert!(
            ignore.lines().any(|l| l == entry),
            ".dockerignore lacks {entry}"
        );
    }
}
