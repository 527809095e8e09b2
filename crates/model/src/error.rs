//! The error type of the wire model.

/// Why a name, id, key or value is not acceptable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// A cluster name breaks the naming rules.
    #[error("invalid cluster name {name:?}: {reason}")]
    ClusterName {
        /// The name.
        name: String,
        /// The rule it breaks.
        reason: String,
    },
    /// A cluster id is out of range.
    #[error("invalid cluster id {id}: {reason}")]
    ClusterId {
        /// The id.
        id: u32,
        /// Why.
        reason: String,
    },
    /// A numeric identity is not acceptable here.
    #[error("invalid identity {id}: {reason}")]
    Identity {
        /// The identity.
        id: u32,
        /// Why.
        reason: String,
    },
    /// A label or label string is malformed.
    #[error("invalid label {label:?}: {reason}")]
    Label {
        /// The label text.
        label: String,
        /// Why.
        reason: String,
    },
    /// A CIDR, IP or mask is malformed.
    #[error("invalid {what} {value:?}: {reason}")]
    Address {
        /// What was parsed (CIDR, IP, mask).
        what: &'static str,
        /// The text.
        value: String,
        /// Why.
        reason: String,
    },
    /// A key does not have the expected shape.
    #[error("invalid key {key:?}: {reason}")]
    Key {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
    /// A value's field disagrees with what its key or source require.
    #[error("{object} {name:?}: field {field:?}: {reason}")]
    Field {
        /// Kind of object (node, ipcache entry, service, cluster config).
        object: &'static str,
        /// The object's key or name.
        name: String,
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// A value is not valid JSON of the expected shape.
    #[error("{object} {name:?}: malformed JSON: {reason}")]
    Json {
        /// Kind of object.
        object: &'static str,
        /// The object's key.
        name: String,
        /// serde's message (names the field and position).
        reason: String,
    },
    /// A setting has an unsupported value.
    #[error("invalid {what}: {reason}")]
    Setting {
        /// Which setting.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

impl ModelError {
    pub(crate) fn field(
        object: &'static str,
        name: &str,
        field: &'static str,
        reason: impl Into<String>,
    ) -> Self {
        Self::Field {
            object,
            name: name.to_string(),
            field,
            reason: reason.into(),
        }
    }

    /// Wraps a serde_json error for the object under `name`.
    pub fn json(object: &'static str, name: &str, err: &serde_json::Error) -> Self {
        Self::Json {
            object,
            name: name.to_string(),
            reason: err.to_string(),
        }
    }
}
