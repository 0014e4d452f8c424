# Caps the first pool of the ALLOCATION answers a pad gets at min = max = N, in a pad probe
# written with ctypes (the 1.28 userland has no gst-python, whose PadProbeInfo.writable_object
# this would otherwise be). A test of what capping vmemexport's proposed pool would do,
# without rebuilding the plugin.
import ctypes

gst = ctypes.CDLL("libgstreamer-1.0.so.0")
vp, u32 = ctypes.c_void_p, ctypes.c_uint
PROBE_CB = ctypes.CFUNCTYPE(ctypes.c_int, vp, vp, vp)
gst.gst_pad_add_probe.restype = ctypes.c_ulong
gst.gst_pad_add_probe.argtypes = [vp, ctypes.c_int, PROBE_CB, vp, vp]
gst.gst_query_get_n_allocation_pools.restype = u32
gst.gst_query_get_n_allocation_pools.argtypes = [vp]
gst.gst_query_parse_nth_allocation_pool.argtypes = [vp, u32, ctypes.POINTER(vp)] + [
    ctypes.POINTER(u32)
] * 3
gst.gst_query_set_nth_allocation_pool.argtypes = [vp, u32, vp, u32, u32, u32]
gst.gst_object_unref.argtypes = [vp]
gst.gst_mini_object_is_writable.argtypes = [vp]
gst.gst_object_get_name.restype = ctypes.c_char_p  # leaked: a few bytes per query
gst.gst_object_get_name.argtypes = [vp]


class ProbeInfo(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("id", ctypes.c_ulong), ("data", vp)]


# GstQuery: a GstMiniObject (64 bytes on 64-bit) then the GstQueryType.
QUERY_TYPE_OFFSET = 64


def gpointer(obj):
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype, get.argtypes = vp, [ctypes.py_object, ctypes.c_char_p]
    return get(obj.__gpointer__, None)


def cap_allocation(pad, n, allocation_type, mask, log):
    """Probe `pad` (a Gst.Pad) so that its ALLOCATION answers have their first pool at n..n.
    `allocation_type` and `mask` are the int values of Gst.QueryType.ALLOCATION and
    QUERY_DOWNSTREAM | PULL; `log` collects what was changed."""

    def probe(_pad, info, _data):
        q = ctypes.cast(info, ctypes.POINTER(ProbeInfo)).contents.data
        qtype = ctypes.c_int.from_address(q + QUERY_TYPE_OFFSET).value
        if qtype != allocation_type or gst.gst_query_get_n_allocation_pools(q) == 0:
            return 1  # GST_PAD_PROBE_OK
        pool, size, lo, hi = vp(), u32(), u32(), u32()
        gst.gst_query_parse_nth_allocation_pool(
            q, 0, ctypes.byref(pool), ctypes.byref(size), ctypes.byref(lo), ctypes.byref(hi)
        )
        writable = bool(gst.gst_mini_object_is_writable(q))
        if writable:
            gst.gst_query_set_nth_allocation_pool(q, 0, pool, size.value, n, n)
        after = u32(), u32()
        gst.gst_query_parse_nth_allocation_pool(
            q, 0, None, None, ctypes.byref(after[0]), ctypes.byref(after[1])
        )
        name = gst.gst_object_get_name(pool).decode() if pool.value else "no pool"
        log.append(f"{name} {lo.value}..{hi.value} -> {after[0].value}..{after[1].value}"
                   + ("" if writable else " (query not writable)"))
        if pool.value:
            gst.gst_object_unref(pool)
        return 1

    cb = PROBE_CB(probe)
    cap_allocation.keep.append(cb)
    ptr = pad if isinstance(pad, int) else gpointer(pad)
    gst.gst_pad_add_probe(ptr, mask, cb, None, None)


cap_allocation.keep = []
