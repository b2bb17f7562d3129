//! What the OCI spec's CRI annotations say about a container's pod: the
//! same facts runsc reads (`io.kubernetes.cri.container-type`,
//! `io.kubernetes.cri.sandbox-id`), read once and checked, so a spec that
//! runsc would read one way is never read another way here.

/// The CRI annotations.
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// A container's place in a pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodRole {
    /// It joins an existing sandbox (CRI container type `container`).
    pub joins: bool,
    /// The pod's sandbox id, when the spec names one.
    pub sandbox: Option<String>,
}

/// Reads the pod annotations of a `config.json`. Missing annotations mean a
/// standalone container; present but malformed ones are an error naming
/// the annotation.
pub fn pod_role(spec_json: &[u8]) -> Result<PodRole, String> {
    let spec: serde_json::Value =
        serde_json::from_slice(spec_json).map_err(|e| format!("config.json is not JSON: {e}"))?;
    let Some(spec) = spec.as_object() else {
        return Err("config.json is not a JSON object".to_string());
    };
    let annotations = match spec.get("annotations") {
        None | Some(serde_json::Value::Null) => return Ok(PodRole::default()),
        Some(serde_json::Value::Object(a)) => a,
        Some(_) => return Err("annotations is not an object".to_string()),
    };
    let text = |key: &str| -> Result<Option<&str>, String> {
        match annotations.get(key) {
            None => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.as_str())),
            Some(other) => Err(format!(
                "annotation {key} is not a string: {}",
                excerpt(&other.to_string())
            )),
        }
    };
    let joins = match text(CONTAINER_TYPE)? {
        None | Some("sandbox") => false,
        Some("container") => true,
        Some(other) => {
            return Err(format!(
                "annotation {CONTAINER_TYPE} is {:?}, not \"sandbox\" or \"container\"",
                excerpt(other)
            ))
        }
    };
    let sandbox = match text(SANDBOX_ID)? {
        None => None,
        Some(id) if id.is_empty() || id.contains('/') || id.chars().any(char::is_control) => {
            return Err(format!(
                "annotation {SANDBOX_ID} {:?} is not a container id",
                excerpt(id)
            ))
        }
        Some(id) => Some(id.to_string()),
    };
    if joins && sandbox.is_none() {
        return Err(format!(
            "annotation {CONTAINER_TYPE} is \"container\" but {SANDBOX_ID} is missing"
        ));
    }
    Ok(PodRole { joins, sandbox })
}

/// At most 80 characters of untrusted text, for an error message.
fn excerpt(text: &str) -> String {
    text.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_pods() {
        let sandbox = br#"{"ociVersion":"1.1.0","annotations":{"io.kubernetes.cri.container-type":"sandbox","io.kubernetes.cri.sandbox-id":"abc123"}}"#;
        assert_eq!(
            pod_role(sandbox),
            Ok(PodRole {
                joins: false,
                sandbox: Some("abc123".into())
            })
        );
        let app = br#"{"annotations":{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.sandbox-id":"abc123"}}"#;
        assert!(pod_role(app).unwrap().joins);
        assert_eq!(
            pod_role(br#"{"ociVersion":"1.1.0"}"#),
            Ok(PodRole::default())
        );
        assert_eq!(pod_role(br#"{"annotations":null}"#), Ok(PodRole::default()));
    }

    #[test]
    fn malformed_annotations_are_named() {
        let cases: [(&[u8], &str); 8] = [
            (b"not json", "config.json is not JSON"),
            (b"[]", "not a JSON object"),
            (br#"{"annotations":[]}"#, "annotations is not an object"),
            (
                br#"{"annotations":{"io.kubernetes.cri.sandbox-id":7}}"#,
                "sandbox-id is not a string",
            ),
            (
                br#"{"annotations":{"io.kubernetes.cri.sandbox-id":""}}"#,
                "\"\" is not a container id",
            ),
            (
                br#"{"annotations":{"io.kubernetes.cri.sandbox-id":"../x"}}"#,
                "\"../x\" is not a container id",
            ),
            (
                br#"{"annotations":{"io.kubernetes.cri.container-type":"pod"}}"#,
                "container-type is \"pod\"",
            ),
            (
                br#"{"annotations":{"io.kubernetes.cri.container-type":"container"}}"#,
                "sandbox-id is missing",
            ),
        ];
        for (spec, want) in cases {
            let got = pod_role(spec).unwrap_err();
            assert!(
                got.contains(want),
                "{}: {got}",
                String::from_utf8_lossy(spec)
            );
        }
    }
}
