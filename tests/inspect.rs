// SPDX-License-Identifier: MPL-2.0
//! What gst-inspect-1.0 shows users: each element's own properties by name, with the value a
//! new element has and when it may change, every one documented, its declared default the
//! value a new element really has, the `stats` fields named in the blurb, and the enum types
//! listed as plugin API.

mod common;

use gst::glib;
use gst::prelude::*;

/// When a property may be set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mutable {
    /// Up to READY.
    Ready,
    /// In any state.
    Playing,
    /// Any time: an object without states (the allocator).
    Always,
    ReadOnly,
}

/// A property as users see it: its name, the value of a new element (serialized; `None` for an
/// unset string or a read-only property) and when it may change.
type Property = (&'static str, Option<&'static str>, Mutable);

const VMEMEXPORT: &[Property] = &[
    ("backing", Some("auto"), Mutable::Ready),
    ("heap", Some("auto"), Mutable::Ready),
    ("copy-fallback", Some("true"), Mutable::Playing),
    ("propose-pool", Some("true"), Mutable::Ready),
    ("sync", Some("true"), Mutable::Playing),
    ("pin-system-memory", Some("true"), Mutable::Ready),
    ("stats", None, Mutable::ReadOnly),
];

const DMABUFSRC: &[Property] = &[
    ("socket-path", None, Mutable::Ready),
    ("server-uid", Some("-1"), Mutable::Ready),
    ("is-live", Some("true"), Mutable::Ready),
    ("retry-timeout", Some("10000"), Mutable::Ready),
    ("stats", None, Mutable::ReadOnly),
];

const DMABUFSRC_STATS: &[&str] = &[
    "frames",
    "released",
    "release-failures",
    "missed",
    "connects",
];

const VMEMEXPORT_STATS: &[&str] = &[
    "frames",
    "exported",
    "pinned-exports",
    "export-cache-hits",
    "passthrough",
    "copies",
    "bytes-copied",
    "syncs",
    "copy-reasons",
    "contiguous-for",
];

const DMABUFSINK: &[Property] = &[
    ("drm-device", None, Mutable::Ready),
    ("drm-addfb", Some("false"), Mutable::Ready),
    ("allow-non-dmabuf", Some("false"), Mutable::Ready),
    ("socket-path", None, Mutable::Ready),
    ("max-pending", Some("4"), Mutable::Ready),
    ("drop-policy", Some("skip"), Mutable::Ready),
    ("allow-other-users", Some("false"), Mutable::Ready),
    ("socket-group", None, Mutable::Ready),
    ("max-clients", Some("16"), Mutable::Ready),
    ("hold-timeout", Some("5000"), Mutable::Ready),
    ("stats", None, Mutable::ReadOnly),
];

const DMABUFSINK_STATS: &[&str] = &[
    "frames",
    "imported",
    "import-failures",
    "addfb-failures",
    "non-dmabuf",
    "clients",
    "clients-total",
    "clients-refused",
    "clients-timed-out",
    "frames-sent",
    "frames-dropped",
    "frames-released",
    "protocol-errors",
    "accept-errors",
];

/// The dmaheap allocator (an object, not an element); what its read-only properties read
/// depends on the machine's heaps.
const DMAHEAP_ALLOCATOR: &[Property] = &[
    ("heap", Some("auto"), Mutable::Always),
    ("heap-name", None, Mutable::ReadOnly),
    ("contiguous", None, Mutable::ReadOnly),
];

fn mutable(pspec: &glib::ParamSpec) -> Mutable {
    let flags = pspec.flags();
    if !flags.contains(glib::ParamFlags::WRITABLE) {
        Mutable::ReadOnly
    } else if flags.contains(gst::PARAM_FLAG_MUTABLE_PLAYING) {
        Mutable::Playing
    } else if flags.contains(gst::PARAM_FLAG_MUTABLE_READY) {
        Mutable::Ready
    } else {
        Mutable::Always
    }
}

/// A [`Property`] with owned strings.
type Seen = (String, Option<String>, Mutable);

fn seen(properties: &[Property]) -> Vec<Seen> {
    properties
        .iter()
        .map(|(name, value, mutable)| (name.to_string(), value.map(str::to_string), *mutable))
        .collect()
}

/// `object`'s own properties (not GstObject's nor a base class's), after checking that each
/// has a real blurb and that its declared default is its initial value.
fn own_properties(object: &glib::Object, what: &str) -> Vec<Seen> {
    object
        .list_properties()
        .iter()
        .filter(|pspec| pspec.owner_type() == object.type_())
        .map(|pspec| {
            let name = pspec.name();
            assert!(
                pspec.blurb().is_some_and(|b| b.len() > 20),
                "{what}.{name} has no real blurb"
            );
            if pspec.flags().contains(glib::ParamFlags::WRITABLE) {
                assert_eq!(
                    object.property_value(name).serialize().ok(),
                    pspec.default_value().serialize().ok(),
                    "{what}.{name}: declared default differs from the initial value"
                );
            }
            let value = match mutable(pspec) {
                Mutable::ReadOnly => None,
                _ => object
                    .property_value(name)
                    .serialize()
                    .ok()
                    .map(|v| v.to_string()),
            };
            (name.to_string(), value, mutable(pspec))
        })
        .collect()
}

/// The field names of `element`'s `stats`, each also named in the property's blurb.
fn stats_fields(element: &gst::Element) -> Vec<String> {
    let stats = element.property::<gst::Structure>("stats");
    let pspec = element.find_property("stats").unwrap();
    let blurb = pspec.blurb().unwrap();
    let fields: Vec<String> = stats.fields().map(|f| f.to_string()).collect();
    for field in &fields {
        assert!(
            blurb.contains(field.as_str()),
            "{}'s stats blurb does not name {field}: {blurb}",
            element.name()
        );
    }
    fields
}

#[test]
fn each_element_has_exactly_its_documented_properties_and_defaults() {
    common::init();
    for (factory, properties, stats) in [
        ("vmemexport", VMEMEXPORT, VMEMEXPORT_STATS),
        ("dmabufsink", DMABUFSINK, DMABUFSINK_STATS),
        ("dmabufsrc", DMABUFSRC, DMABUFSRC_STATS),
    ] {
        let element = gst::ElementFactory::make(factory).build().unwrap();
        assert_eq!(
            own_properties(element.upcast_ref(), factory),
            seen(properties),
            "{factory}'s own properties"
        );
        assert_eq!(stats_fields(&element), stats, "{factory}'s stats fields");
    }
}

#[test]
fn the_dmaheap_allocator_has_exactly_its_documented_properties() {
    common::init();
    let allocator = gst::Allocator::find(Some(gstvmem::heapalloc::ALLOCATOR_NAME))
        .expect("registered at plugin load");
    assert_eq!(
        own_properties(allocator.upcast_ref(), "dmaheap"),
        seen(DMAHEAP_ALLOCATOR)
    );
}

#[test]
fn enum_types_are_plugin_api() {
    common::init();
    for ty in [
        gstvmem::vmemexport::Backing::static_type(),
        gstvmem::dmabufsink::DropPolicy::static_type(),
    ] {
        assert!(
            ty.plugin_api_flags().is_some(),
            "{} is not marked as plugin API",
            ty.name()
        );
    }
}
