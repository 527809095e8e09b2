//! Errors of policy parsing and validation.
//!
//! Every error that reaches a user names the object (document number, kind, namespace and
//! name when known), the field (a path such as `spec.ingress[0].toPorts[0].ports[0].port`) and
//! the reason.

use thiserror::Error;

/// Why a policy document was rejected.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum PolicyError {
    /// A document is not YAML or JSON at all.
    #[error("document {document}: not valid YAML or JSON: {reason}")]
    Syntax {
        /// 1-based document number in the file.
        document: usize,
        /// The parser's message.
        reason: String,
    },
    /// A field has a wrong type, an unknown name or an invalid value.
    #[error("{object}: {field}: {reason}")]
    Invalid {
        /// The object at fault, e.g. `document 2 (CiliumNetworkPolicy default/allow-dns)`.
        object: String,
        /// Path of the field at fault, e.g. `spec.ingress[0].fromCIDR[1]`.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

/// A field error before the object's name is attached: (field path, reason).
pub(crate) type FieldError = (String, String);

/// Builds a [`FieldError`].
pub(crate) fn field_err(field: impl Into<String>, reason: impl Into<String>) -> FieldError {
    (field.into(), reason.into())
}
