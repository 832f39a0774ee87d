//! Validators built from the upstream schemas in `../shared/specs/`:
//!
//! - Kubernetes v1.33.0 "local-strict" JSON schemas (draft 2020-12, `additionalProperties:
//!   false` everywhere), one file per kind, `$ref`s into `_definitions.json`, which is
//!   registered under its `$id` so nothing is fetched.
//! - Istio 1.30.3 CRDs (`crd-all.gen.yaml`): each version's `openAPIV3Schema`, made as strict
//!   as the API server is — unknown fields fail (structural pruning + strict field
//!   validation), `nullable` allows null, `x-kubernetes-int-or-string` allows both — with the
//!   root's `apiVersion`/`kind` pinned and `metadata` checked as a Kubernetes ObjectMeta, and
//!   the CRDs' CEL rules evaluated by [`super::cel`].
//!
//! An object whose kind has no schema here is an error, never a silent pass.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use jsonschema::paths::{LazyLocation, Location};
use jsonschema::{Draft, Keyword, Resource, ValidationError, Validator};
use serde_json::{json, Map, Value};

use super::cel::Rule;
use super::specs;

const DEFS_ID: &str = "https://kubernetes.io/api/_definitions.json";
const OBJECT_META: &str =
    "https://kubernetes.io/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta";

/// (apiVersion, kind) → schema, compiled on first use (so only the CEL rules of the kinds
/// we emit have to be known).
pub struct Schemas {
    defs: Value,
    schemas: BTreeMap<(String, String), Value>,
    compiled: Mutex<BTreeMap<(String, String), Arc<Validator>>>,
}

impl Schemas {
    pub fn load() -> Self {
        let defs: Value =
            read_json(&specs().join("kubernetes/v1.33.0-local-strict/_definitions.json"));
        let mut schemas = BTreeMap::new();

        // Kubernetes: every kind file in the folder.
        let k8s_dir = specs().join("kubernetes/v1.33.0-local-strict");
        let mut files: Vec<_> = std::fs::read_dir(&k8s_dir)
            .expect("kubernetes schema dir")
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.extension().is_some_and(|e| e == "json")
                    && p.file_name() != Some(std::ffi::OsStr::new("_definitions.json"))
            })
            .collect();
        files.sort();
        for f in files {
            let schema = read_json(&f);
            let api = schema["properties"]["apiVersion"]["enum"][0]
                .as_str()
                .unwrap_or_else(|| panic!("{}: no apiVersion enum", f.display()))
                .to_string();
            let kind = schema["properties"]["kind"]["enum"][0]
                .as_str()
                .unwrap_or_else(|| panic!("{}: no kind enum", f.display()))
                .to_string();
            schemas.insert((api, kind), schema);
        }

        // Istio: every served version of every CRD.
        let crds = super::read_yaml(&specs().join("istio/crd-all.gen.yaml"));
        for crd in crds {
            let group = crd["spec"]["group"]
                .as_str()
                .expect("CRD group")
                .to_string();
            let kind = crd["spec"]["names"]["kind"]
                .as_str()
                .expect("CRD kind")
                .to_string();
            for v in crd["spec"]["versions"].as_array().expect("CRD versions") {
                if v["served"] != Value::Bool(true) {
                    continue;
                }
                let version = v["name"].as_str().expect("version name");
                let api = format!("{group}/{version}");
                let mut schema = v["schema"]["openAPIV3Schema"].clone();
                structural(&mut schema);
                let root = schema.as_object_mut().expect("object schema");
                let props = root
                    .entry("properties")
                    .or_insert_with(|| json!({}))
                    .as_object_mut()
                    .expect("properties");
                props.insert("apiVersion".into(), json!({"type": "string", "const": api}));
                props.insert("kind".into(), json!({"type": "string", "const": kind}));
                props.insert("metadata".into(), json!({"$ref": OBJECT_META}));
                root.insert("additionalProperties".into(), json!(false));
                root.insert(
                    "required".into(),
                    json!(["apiVersion", "kind", "metadata", "spec"]),
                );
                schemas.insert((api, kind.clone()), schema);
            }
        }
        Self {
            defs,
            schemas,
            compiled: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn knows(&self, api: &str, kind: &str) -> bool {
        self.schemas
            .contains_key(&(api.to_string(), kind.to_string()))
    }

    fn validator(&self, api: &str, kind: &str) -> Option<Arc<Validator>> {
        let key = (api.to_string(), kind.to_string());
        let schema = self.schemas.get(&key)?;
        let mut compiled = self.compiled.lock().unwrap_or_else(|p| p.into_inner());
        Some(
            compiled
                .entry(key)
                .or_insert_with(|| Arc::new(compile(schema, &self.defs)))
                .clone(),
        )
    }

    /// Every error of `obj` against its kind's schema (empty: valid).
    pub fn errors(&self, obj: &Value) -> Vec<String> {
        let api = obj["apiVersion"].as_str().unwrap_or("");
        let kind = obj["kind"].as_str().unwrap_or("");
        let Some(v) = self.validator(api, kind) else {
            return vec![format!(
                "no upstream schema for apiVersion {api:?} kind {kind:?}"
            )];
        };
        v.iter_errors(obj)
            .map(|e| format!("{}: {}", e.instance_path, e))
            .collect()
    }
}

fn read_json(p: &std::path::Path) -> Value {
    let text = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn compile(schema: &Value, defs: &Value) -> Validator {
    jsonschema::options()
        .with_draft(Draft::Draft202012)
        .with_resource(
            DEFS_ID,
            Resource::from_contents(defs.clone()).expect("definitions resource"),
        )
        .with_keyword("x-kubernetes-validations", cel_keyword)
        .build(schema)
        .unwrap_or_else(|e| panic!("schema does not compile: {e}"))
}

/// Makes an OpenAPI v3 CRD schema as strict as the API server: objects with `properties`
/// refuse unknown fields unless `x-kubernetes-preserve-unknown-fields`; `nullable` and
/// `x-kubernetes-int-or-string` become JSON Schema types.
pub fn structural(schema: &mut Value) {
    let Value::Object(m) = schema else { return };
    if m.remove("nullable") == Some(Value::Bool(true)) {
        if let Some(Value::String(t)) = m.get("type").cloned() {
            m.insert("type".into(), json!([t, "null"]));
        }
    }
    if m.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
        m.insert("type".into(), json!(["integer", "string"]));
    }
    let preserve = m.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if m.contains_key("properties") && !m.contains_key("additionalProperties") && !preserve {
        m.insert("additionalProperties".into(), Value::Bool(false));
    }
    if let Some(Value::Object(props)) = m.get_mut("properties") {
        props.values_mut().for_each(structural);
    }
    for k in ["items", "additionalProperties", "not"] {
        if let Some(child) = m.get_mut(k) {
            structural(child);
        }
    }
    for k in ["allOf", "anyOf", "oneOf"] {
        if let Some(Value::Array(items)) = m.get_mut(k) {
            items.iter_mut().for_each(structural);
        }
    }
}

struct CelKeyword {
    rules: Vec<(Rule, String)>,
}

// The signature is jsonschema's keyword factory type.
#[allow(clippy::result_large_err)]
fn cel_keyword<'a>(
    _parent: &'a Map<String, Value>,
    value: &'a Value,
    path: Location,
) -> Result<Box<dyn Keyword>, ValidationError<'a>> {
    let mut rules = Vec::new();
    for r in value.as_array().into_iter().flatten() {
        let text = r["rule"].as_str().unwrap_or("");
        let Some(rule) = Rule::parse(text) else {
            return Err(ValidationError::custom(
                path,
                Location::new(),
                value,
                format!("unsupported CEL rule (teach tests/common/cel.rs): {text}"),
            ));
        };
        let message = r["message"].as_str().unwrap_or(text).to_string();
        rules.push((rule, message));
    }
    Ok(Box::new(CelKeyword { rules }))
}

impl Keyword for CelKeyword {
    fn validate<'i>(
        &self,
        instance: &'i Value,
        location: &LazyLocation,
    ) -> Result<(), ValidationError<'i>> {
        for (rule, message) in &self.rules {
            if let Some(why) = rule.check(instance) {
                return Err(ValidationError::custom(
                    Location::new(),
                    location.into(),
                    instance,
                    format!("{message} ({why})"),
                ));
            }
        }
        Ok(())
    }

    fn is_valid(&self, instance: &Value) -> bool {
        self.rules.iter().all(|(r, _)| r.check(instance).is_none())
    }
}

/// Loaded once per test binary.
pub fn shared() -> Arc<Schemas> {
    static SCHEMAS: std::sync::OnceLock<Arc<Schemas>> = std::sync::OnceLock::new();
    SCHEMAS.get_or_init(|| Arc::new(Schemas::load())).clone()
}
