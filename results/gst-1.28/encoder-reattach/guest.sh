#!/bin/bash
# Runs in the guest (tests/vm/run --kernel 7 --userland 1.28 -- bash THIS [PHASES]): kprobe
# hit counts, CPU time and V4L2/vmemexport logs of the encoder arm (b), upstream's copy path
# against vmemexport + dmabuf-import. Phases: info counts timing logs (the default), matrix,
# graph, timegraph, syscalls, producer (see ../encoder-reattach.md). Each run prints a RESULT
# line (run.py); raw logs and traces go to target/enc/ (not committed).
set -u
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../../.."
out=$PWD/target/enc
mkdir -p "$out"
export GST_PLUGIN_PATH=$PWD/target/release
export GST_REGISTRY=$out/registry.bin
export PYTHONDONTWRITEBYTECODE=1
phases=${*:-info counts timing logs}
n=${FRAMES:-60}

modprobe vicodec
modprobe udmabuf 2>/dev/null || true
T=/sys/kernel/tracing
[ -e $T/kprobe_events ] || mount -t tracefs nodev $T
echo "== kernel $(uname -r), $(gst-launch-1.0 --version | sed -n 2p)"
ls -l /dev/udmabuf /dev/video* 2>&1

# kprobes: every candidate that the kernel has (kallsyms), counted in kprobe_profile.
# Arguments (x86-64 registers) for the ones the per-frame trace reads.
: >$T/kprobe_events
declare -A args=(
    [vb2_vmalloc_attach_dmabuf]='vb=%di:x64 dbuf=%dx:x64 size=%cx:u64'
    [vb2_vmalloc_detach_dmabuf]='priv=%di:x64'
    [vb2_vmalloc_map_dmabuf]='priv=%di:x64'
    [vb2_vmalloc_unmap_dmabuf]='priv=%di:x64'
    [dma_buf_vmap]='dbuf=%di:x64'
    [dma_buf_vmap_unlocked]='dbuf=%di:x64'
    [dma_buf_vunmap]='dbuf=%di:x64'
    [dma_buf_vunmap_unlocked]='dbuf=%di:x64'
    [vm_map_ram]='count=%si:u32'
    [vm_unmap_ram]='count=%si:u32'
)
fns="vb2_vmalloc_attach_dmabuf vb2_vmalloc_detach_dmabuf vb2_vmalloc_map_dmabuf
 vb2_vmalloc_unmap_dmabuf vb2_vmalloc_get_dmabuf vb2_vmalloc_alloc vb2_vmalloc_put
 dma_buf_attach dma_buf_dynamic_attach dma_buf_detach dma_buf_map_attachment
 dma_buf_map_attachment_unlocked dma_buf_unmap_attachment dma_buf_unmap_attachment_unlocked
 dma_buf_vmap dma_buf_vmap_unlocked dma_buf_vunmap dma_buf_vunmap_unlocked dma_buf_get
 dma_buf_begin_cpu_access dma_buf_end_cpu_access
 vmap_udmabuf vunmap_udmabuf map_udmabuf unmap_udmabuf begin_cpu_udmabuf end_cpu_udmabuf
 get_sg_table put_sg_table release_udmabuf udmabuf_create
 vm_map_ram vm_unmap_ram vmap vunmap _vm_unmap_aliases vm_unmap_aliases
 flush_tlb_kernel_range __purge_vmap_area_lazy purge_vmap_node
 vb2_core_qbuf vb2_core_dqbuf vb2_core_reqbufs __prepare_dmabuf __prepare_mmap
 __vb2_plane_dmabuf_put __vb2_buf_mem_prepare __vb2_buf_mem_finish __buf_prepare
 vicodec_buf_queue device_run"
for f in $fns; do
    if grep -qE " [tT] $f([[:space:]]|$)" /proc/kallsyms; then
        echo "p:k_$f $f ${args[$f]:-}" >>$T/kprobe_events 2>/dev/null \
            || echo "(kprobe on $f refused)"
    else
        echo "(no symbol $f)"
    fi
done
echo "== kprobes set:"
cut -d' ' -f1 $T/kprobe_events | tr '\n' ' '
echo
echo 1 >$T/events/kprobes/enable
echo 0 >$T/tracing_on

caps="video/x-raw,format=I420,width=1280,height=720,framerate=30/1"
src="videotestsrc name=src num-buffers=$n ! $caps"
up="$src ! v4l2fwhtenc name=enc ! fakesink"
ours="$src ! vmemexport name=vx ! v4l2fwhtenc name=enc output-io-mode=dmabuf-import ! fakesink"
# With a queue in front of the encoder: more frames in flight than the encoder's 2 OUTPUT
# buffers, whatever the timing.
qup="$src ! queue ! v4l2fwhtenc name=enc ! fakesink"
qours="$src ! vmemexport name=vx ! queue ! v4l2fwhtenc name=enc output-io-mode=dmabuf-import ! fakesink"
run() { nice -n 19 python3 "$here/run.py" "$@"; }

for phase in $phases; do
    case $phase in
    info)
        for d in /dev/video*; do
            echo "== $d: $(cat /sys/class/video4linux/${d#/dev/}/name)"
        done
        dev=$(for d in /sys/class/video4linux/video*; do
            grep -q 'vicodec-source\|stateful-encoder' $d/name 2>/dev/null && echo /dev/${d##*/}; done | head -n1)
        [ -n "$dev" ] && v4l2-ctl -d "$dev" --all 2>&1 | head -n 60
        ;;
    counts)
        # kprobes enabled (counting in kprobe_profile, no trace buffer)
        for arm in upstream ours upstream ours; do
            [ "$arm" = upstream ] && p=$up || p=$ours
            run "count-$arm" "$p"
        done
        ;;
    timing)
        echo 0 >$T/events/kprobes/enable
        for arm in upstream ours upstream ours; do
            [ "$arm" = upstream ] && p=$up || p=$ours
            run "time-$arm" "$p"
        done
        echo 1 >$T/events/kprobes/enable
        ;;
    logs)
        # Per-QBUF trace (index <-> dma-buf) plus the GStreamer logs, one run each.
        echo 8192 >$T/buffer_size_kb
        for e in v4l2/v4l2_qbuf v4l2/v4l2_dqbuf vb2/vb2_qbuf vb2/vb2_buf_done; do
            [ -e $T/events/$e/enable ] && echo 1 >$T/events/$e/enable
        done
        for arm in upstream ours; do
            [ "$arm" = upstream ] && p=$up || p=$ours
            : >$T/trace
            echo 1 >$T/tracing_on
            GST_DEBUG=v4l2bufferpool:5,v4l2allocator:6,v4l2videoenc:5,v4l2:5,vmemexport:5,vudmabufalloc:5,GST_PERFORMANCE:6 \
                GST_DEBUG_NO_COLOR=1 GST_DEBUG_FILE=$out/gst-$arm.log run "log-$arm" "$p"
            echo 0 >$T/tracing_on
            cp $T/trace $out/trace-$arm.txt
            echo "== $arm: $(wc -l <$out/gst-$arm.log) log lines, $(grep -vc '^#' $out/trace-$arm.txt) trace lines"
        done
        ;;
    matrix)
        # kprobes counting; each round: the plain arms, the queue arms, and vmemexport's pool
        # capped at the encoder's OUTPUT buffer count (CAP_POOL=2)
        for r in $(seq "${REPS:-3}"); do
            run "m$r-ours" "$ours"
            CAP_POOL=2 run "m$r-ours-cap2" "$ours"
            run "m$r-upstream" "$up"
            run "m$r-queue-ours" "$qours"
            CAP_POOL=2 run "m$r-queue-ours-cap2" "$qours"
            [ -n "${SKIP_QUEUE_UPSTREAM:-}" ] || run "m$r-queue-upstream" "$qup"
        done
        ;;
    graph)
        # Duration of each call (function_graph, depth 1) of the re-attach work, the encode
        # (vicodec's device_run) and the dma-buf ioctls (DMA_BUF_IOCTL_SYNC), one run each.
        echo 0 >$T/events/kprobes/enable
        echo 16384 >$T/buffer_size_kb
        : >$T/set_graph_function
        for f in device_run vb2_vmalloc_attach_dmabuf vb2_vmalloc_map_dmabuf \
            vb2_vmalloc_unmap_dmabuf vb2_vmalloc_detach_dmabuf dma_buf_ioctl; do
            echo "$f" >>$T/set_graph_function 2>/dev/null || echo "(no graph function $f)"
        done
        echo "== graph functions: $(tr '\n' ' ' <$T/set_graph_function)"
        echo 1 >$T/max_graph_depth
        echo function_graph >$T/current_tracer
        for arm in queue-ours queue-ours-cap2 ours upstream; do
            case $arm in
            queue-ours) p=$qours c=0 ;; queue-ours-cap2) p=$qours c=2 ;;
            ours) p=$ours c=0 ;; upstream) p=$up c=0 ;;
            esac
            : >$T/trace
            echo 1 >$T/tracing_on
            CAP_POOL=$c run "graph-$arm" "$p"
            echo 0 >$T/tracing_on
            cp $T/trace $out/graph-$arm.txt
        done
        echo nop >$T/current_tracer
        echo 1 >$T/events/kprobes/enable
        ;;
    timegraph)
        # CPU time with kprobes off, interleaved arms; function_graph on the encode
        # (device_run) only, so each run's CPU splits into the encode and the rest.
        echo 0 >$T/events/kprobes/enable
        echo 4096 >$T/buffer_size_kb
        echo device_run >$T/set_graph_function
        echo 1 >$T/max_graph_depth
        echo function_graph >$T/current_tracer
        for r in $(seq "${REPS:-4}"); do
            for arm in ours ours-cap2 upstream; do
                case $arm in
                ours) p=$ours c=0 ;; ours-cap2) p=$ours c=2 ;; upstream) p=$up c=0 ;;
                esac
                : >$T/trace
                echo 1 >$T/tracing_on
                CAP_POOL=$c run "tg$r-$arm" "$p"
                echo 0 >$T/tracing_on
                cp $T/trace $out/tg$r-$arm.txt
            done
        done
        echo nop >$T/current_tracer
        echo 1 >$T/events/kprobes/enable
        ;;
    syscalls)
        # Which syscalls each arm makes per frame (kprobes counting too)
        i=0
        for arm in ours upstream ours upstream; do
            [ "$arm" = upstream ] && p=$up || p=$ours
            i=$((i + 1))
            SYSCALL_HIST=$out/syscalls-$arm-$i.txt run "sys-$arm" "$p"
        done
        ;;
    producer)
        # The producer alone (videotestsrc into its own pool, or into vmemexport's) and the two
        # arms, with transparent huge pages as the kernel has them and then off.
        echo 0 >$T/events/kprobes/enable
        thp=/sys/kernel/mm/transparent_hugepage/enabled
        prod="$src ! fakesink name=enc"
        prodx="$src ! vmemexport name=vx ! fakesink name=enc"
        for mode in default never; do
            [ "$mode" = never ] && echo never >$thp
            echo "== THP: $(cat $thp)"
            for r in $(seq "${REPS:-3}"); do
                run "prod-$mode-$r-own" "$prod"
                run "prod-$mode-$r-vmemexport" "$prodx"
            done
            for r in 1 2; do
                run "arm-$mode-$r-upstream" "$up"
                run "arm-$mode-$r-ours" "$ours"
            done
            grep -i AnonHuge /proc/meminfo
        done
        echo 1 >$T/events/kprobes/enable
        ;;
    esac
done
echo 0 >$T/events/kprobes/enable
echo "== done"
