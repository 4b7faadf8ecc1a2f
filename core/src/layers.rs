//! The dependency rule between the crate's modules, checked over the source text: a module
//! uses only modules of its own layer or below (outside its tests).
//!
//! model (error, failpoint, change, position, clock, table_name, metrics, telemetry)
//!   ← codec, parquet, config, aws
//!   ← output, store, lease
//!   ← source, sink
//!   ← engine
//!   ← runtime

/// Layer of each top-level module, lowest first.
const LAYERS: &[(&str, u8)] = &[
    ("error", 0),
    ("failpoint", 0),
    ("change", 0),
    ("position", 0),
    ("clock", 0),
    ("table_name", 0),
    ("metrics", 0),
    ("telemetry", 0),
    ("codec", 1),
    ("parquet", 1),
    ("config", 1),
    ("aws", 1),
    ("output", 2),
    ("store", 2),
    ("lease", 2),
    ("source", 3),
    ("sink", 3),
    ("engine", 4),
    ("runtime", 5),
];

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

/// Every `crate::<module>` a file's non-test code names, with its line number.
fn uses(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.starts_with("#[cfg(test)]") || line.starts_with("#[cfg(all(test") {
            break;
        }
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push((n + 1, name));
            }
        }
    }
    out
}

#[test]
fn no_module_uses_a_layer_above_it() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![root.clone()];
    let mut violations = Vec::new();
    let mut checked = 0;
    while let Some(p) = files.pop() {
        if p.is_dir() {
            for e in std::fs::read_dir(&p).into_iter().flatten().flatten() {
                files.push(e.path());
            }
            continue;
        }
        if p.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let rel = p
            .strip_prefix(&root)
            .unwrap_or(&p)
            .to_string_lossy()
            .to_string();
        let top = rel.split(['/', '.']).next().unwrap_or("").to_string();
        let Some(own) = layer(&top) else {
            assert!(
                matches!(top.as_str(), "lib" | "layers"),
                "{rel}: module {top} has no layer in LAYERS"
            );
            continue;
        };
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        for (line, used) in uses(&text) {
            checked += 1;
            if let Some(l) = layer(&used)
                && l > own
            {
                violations.push(format!(
                    "{rel}:{line}: {top} (layer {own}) uses {used} (layer {l})"
                ));
            }
        }
    }
    assert!(
        checked > 100,
        "only {checked} uses found: is the scan broken?"
    );
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}
