// SPDX-License-Identifier: MPL-2.0
//! docs/reference.md, generated from the plugin itself: every element and the allocator, with
//! their metadata, pads and properties (type, default, range or values, when they may change,
//! blurb). `make docs` writes it (`VMEM_WRITE_REFERENCE=1`); this test fails whenever the
//! checked-in file differs from what the plugin says, so the reference cannot go stale.
//! Caps are left to each element's manual: they depend on the GStreamer version at run time.

mod common;

use std::fmt::Write as _;

use gst::glib;
use gst::glib::translate::IntoGlib;
use gst::prelude::*;

const PLUGIN: &str = "vmem";
const ALLOCATORS: &[&str] = &["dmaheap"];

fn cell(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

/// When a property may be set, as gst-inspect-1.0 says it.
fn changeable(pspec: &glib::ParamSpec, has_states: bool) -> &'static str {
    let flags = pspec.flags();
    if !flags.contains(glib::ParamFlags::WRITABLE) {
        "read-only"
    } else if !has_states {
        "any time"
    } else if flags.contains(gst::PARAM_FLAG_MUTABLE_PLAYING) {
        "any state"
    } else if flags.contains(gst::PARAM_FLAG_MUTABLE_READY) {
        "up to READY"
    } else {
        "in NULL"
    }
}

/// The range of a numeric property, or the values of an enum's.
fn range(pspec: &glib::ParamSpec) -> String {
    macro_rules! numeric {
        ($($t:ty),*) => {$(
            if let Some(p) = pspec.downcast_ref::<$t>() {
                return format!("{} to {}", p.minimum(), p.maximum());
            }
        )*};
    }
    numeric!(
        glib::ParamSpecInt,
        glib::ParamSpecUInt,
        glib::ParamSpecInt64,
        glib::ParamSpecUInt64,
        glib::ParamSpecDouble
    );
    if let Some(class) = glib::EnumClass::with_type(pspec.value_type()) {
        return class
            .values()
            .iter()
            .map(|v| format!("`{}`", v.nick()))
            .collect::<Vec<_>>()
            .join(", ");
    }
    String::new()
}

fn default(pspec: &glib::ParamSpec) -> String {
    if !pspec.flags().contains(glib::ParamFlags::WRITABLE) {
        return String::new();
    }
    match pspec.default_value().serialize() {
        Ok(v) if !v.is_empty() => format!("`{v}`"),
        _ => "(none)".into(),
    }
}

fn properties(out: &mut String, object: &glib::Object, has_states: bool) {
    let own: Vec<_> = object
        .list_properties()
        .iter()
        .filter(|p| p.owner_type() == object.type_())
        .cloned()
        .collect();
    if own.is_empty() {
        out.push_str("No properties of its own.\n\n");
        return;
    }
    out.push_str("| property | type | default | range / values | may change | description |\n");
    out.push_str("|---|---|---|---|---|---|\n");
    for p in own {
        let _ = writeln!(
            out,
            "| `{}` | {} | {} | {} | {} | {} |",
            p.name(),
            p.value_type().name(),
            default(&p),
            range(&p),
            changeable(&p, has_states),
            cell(p.blurb().unwrap_or_default())
        );
    }
    out.push('\n');
}

/// The reference as the plugin describes itself.
fn reference() -> String {
    let mut out = String::from(
        "# Element reference\n\n\
         Generated from the plugin by `make docs` (tests/reference.rs, which fails when this file \
         is stale). Caps depend on the GStreamer version at run time: see each element's manual \
         ([vmemexport](vmemexport.md), [dmabufsink](dmabufsink.md), \
         [the dmaheap allocator](dmaheap.md)).\n\n",
    );
    let registry = gst::Registry::get();
    let mut factories: Vec<gst::ElementFactory> = registry
        .features_by_plugin(PLUGIN)
        .into_iter()
        .filter_map(|f| f.downcast::<gst::ElementFactory>().ok())
        .collect();
    factories.sort_by_key(|f| f.name());
    // The statically registered plugin and a loaded libgstvmem.so may both be in the registry.
    factories.dedup_by_key(|f| f.name());
    for factory in factories {
        let name = factory.name();
        let _ = writeln!(
            out,
            "## {name}\n\n{}\n\n- long name: {}\n- class: {}\n- rank: {}\n- pads: {}\n",
            cell(
                factory
                    .metadata(gst::ELEMENT_METADATA_DESCRIPTION)
                    .unwrap_or_default()
            ),
            factory
                .metadata(gst::ELEMENT_METADATA_LONGNAME)
                .unwrap_or_default(),
            factory
                .metadata(gst::ELEMENT_METADATA_KLASS)
                .unwrap_or_default(),
            match factory.rank().into_glib() {
                0 => "none (never autoplugged)".to_string(),
                r => r.to_string(),
            },
            factory
                .static_pad_templates()
                .iter()
                .map(|t| format!(
                    "`{}` ({:?}, {:?})",
                    t.name_template(),
                    t.direction(),
                    t.presence()
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let element = factory.create().build().expect("the element is made");
        properties(&mut out, element.upcast_ref(), true);
        if element.find_property("stats").is_some() {
            let stats = element.property::<gst::Structure>("stats");
            let _ = writeln!(
                out,
                "`stats` fields: {}.\n",
                stats
                    .fields()
                    .map(|f| format!("`{f}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    for name in ALLOCATORS {
        let allocator = gst::Allocator::find(Some(name)).expect("the allocator is registered");
        let _ = writeln!(
            out,
            "## Allocator `{name}`\n\n`gst_allocator_find (\"{name}\")` ({}).\n",
            allocator.type_().name()
        );
        properties(&mut out, allocator.upcast_ref(), false);
    }
    out.truncate(out.trim_end().len());
    out.push('\n');
    out
}

#[test]
fn the_checked_in_reference_is_what_the_plugin_says() {
    common::init();
    let generated = reference();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/reference.md");
    if std::env::var_os("VMEM_WRITE_REFERENCE").is_some() {
        std::fs::write(path, &generated).unwrap();
    }
    let on_disk = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "docs/reference.md is stale: run `make docs` and commit it\n--- generated:\n{generated}"
    );
}
