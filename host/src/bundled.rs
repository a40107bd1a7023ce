//! The bundled policies: every name in `guest/policies.txt`, built and embedded by build.rs.

/// (name, component bytes) of each bundled policy, in the list's order.
static BUNDLED: &[(&str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/bundled.rs"));

/// The component bytes of the bundled policy `name` (a line of `guest/policies.txt`), if any.
pub fn bundled_policy(name: &str) -> Option<&'static [u8]> {
    BUNDLED.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
}

/// The names of the bundled policies, as `guest/policies.txt` lists them.
pub fn bundled_policy_names() -> impl Iterator<Item = &'static str> {
    BUNDLED.iter().map(|(n, _)| *n)
}
