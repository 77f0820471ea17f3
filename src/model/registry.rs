//! The one way wick registers architectures, for every task: a task keeps a list of
//! [`Family`]s (the names one file builds, and its builder) and looks a configured name up in
//! it. Adding an architecture is one file that exports its `FAMILY` and one line in its task's
//! `registry.rs` (`classify/`, `segment/`, `detect/`).

use super::error::ModelError;

/// The architectures one file builds. `Build` is the task's builder function type.
pub(crate) struct Family<Build: 'static> {
    /// The names it builds, as `config.json`'s `architecture` spells them.
    pub(crate) names: &'static [&'static str],
    /// Builds the network of one of `names`.
    pub(crate) build: Build,
}

/// Every architecture name of `registry`, in registry order.
pub(crate) fn supported<Build>(registry: &[Family<Build>]) -> Vec<&'static str> {
    registry
        .iter()
        .flat_map(|f| f.names.iter().copied())
        .collect()
}

/// The builder of `name`, or the error naming every architecture of `registry`.
pub(crate) fn builder<'r, Build>(
    registry: &'r [Family<Build>],
    name: &str,
) -> Result<&'r Build, ModelError> {
    registry
        .iter()
        .find(|f| f.names.contains(&name))
        .map(|f| &f.build)
        .ok_or_else(|| ModelError::UnknownArchitecture {
            name: name.to_string(),
            supported: supported(registry).join(", "),
        })
}
