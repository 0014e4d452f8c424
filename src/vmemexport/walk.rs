// SPDX-License-Identifier: MPL-2.0
//! The walk from vmemexport to the elements beyond its neighbours: through elements that pass
//! buffers on as they are (queues, tees, capsfilters...: the quirks module's forwarders) and into and out of bins, up to the
//! element that produces or consumes vmemexport's memory.

use gst::prelude::*;

/// How deep the walk goes through forwarders and bins before giving up.
const MAX_HOPS: usize = 32;

/// Walks from `pad`'s peer away from vmemexport (downstream from a src pad, upstream from a
/// sink pad) through forwarders and bins; the first element for which `found` has an answer
/// gives the answer.
pub fn find_beyond<T>(pad: &gst::Pad, found: impl Fn(&gst::Element) -> Option<T>) -> Option<T> {
    let downstream = pad.direction() == gst::PadDirection::Src;
    let mut todo: Vec<(gst::Pad, usize)> = pad.peer().into_iter().map(|p| (p, 0)).collect();
    while let Some((pad, hops)) = todo.pop() {
        if hops > MAX_HOPS {
            continue;
        }
        // Into a bin (downstream), or out of one (upstream): the ghost pad leads to the
        // element inside.
        if let Some(ghost) = pad.downcast_ref::<gst::GhostPad>() {
            if let Some(target) = ghost.target() {
                todo.push((target, hops + 1));
            }
            continue;
        }
        // Out of the bin vmemexport or the last element is in: linked to a ghost pad's
        // internal proxy.
        if let Some(proxy) = pad.downcast_ref::<gst::ProxyPad>()
            && let Some(ghost) = proxy.parent().and_downcast::<gst::GhostPad>()
        {
            todo.extend(ghost.peer().map(|p| (p, hops + 1)));
            continue;
        }
        let Some(element) = pad.parent_element() else {
            continue;
        };
        if let Some(answer) = found(&element) {
            return Some(answer);
        }
        if crate::quirks::forwards_buffers(&element) {
            let beyond = if downstream {
                element.src_pads()
            } else {
                element.sink_pads()
            };
            for next in beyond {
                todo.extend(next.peer().map(|p| (p, hops + 1)));
            }
        }
    }
    None
}

/// Every answer `found` has for the elements beyond `pad` (see [`find_beyond`]): all the
/// branches of a tee, for instance.
pub fn collect_beyond<T>(pad: &gst::Pad, found: impl Fn(&gst::Element) -> Option<T>) -> Vec<T> {
    let answers = std::cell::RefCell::new(Vec::new());
    find_beyond(pad, |element| {
        answers.borrow_mut().extend(found(element));
        None::<()>
    });
    answers.into_inner()
}

/// `element` as the walks name it: "name (GType)".
pub fn describe(element: &gst::Element) -> String {
    format!("{} ({})", element.name(), element.type_().name())
}
