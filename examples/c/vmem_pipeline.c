/* SPDX-License-Identifier: MPL-2.0
 *
 * vmemexport and the dmaheap allocator from C.
 *
 *   cc vmem_pipeline.c $(pkg-config --cflags --libs gstreamer-1.0 gstreamer-allocators-1.0)
 *   GST_PLUGIN_PATH=target/release ./a.out [SINK]
 */
#include <gst/gst.h>
#include <gst/allocators/allocators.h>

int
main (int argc, char **argv)
{
  const char *sink = argc > 1 ? argv[1] : "kmssink driver-name=vkms sync=false";
  GError *error = NULL;

  gst_init (&argc, &argv);

  /* The dmaheap allocator is registered when the plugin loads. */
  GstPlugin *plugin = gst_plugin_load_by_name ("vmem");
  if (!plugin) {
    g_printerr ("the vmem plugin is not on GST_PLUGIN_PATH\n");
    return 1;
  }
  gst_object_unref (plugin);
  GstAllocator *allocator = gst_allocator_find ("dmaheap");
  if (!allocator) {
    g_printerr ("no allocator named dmaheap\n");
    return 1;
  }
  GstMemory *mem = gst_allocator_alloc (allocator, 1 << 20, NULL);
  if (!mem || !gst_is_dmabuf_memory (mem)) {
    g_printerr ("dmaheap allocation failed\n");
    return 1;
  }
  gchar *heap = NULL;
  g_object_get (allocator, "heap-name", &heap, NULL);
  g_print ("dmaheap: %" G_GSIZE_FORMAT " bytes of dma-buf memory from heap %s\n", gst_memory_get_sizes (mem, NULL, NULL), heap);
  g_free (heap);
  gst_memory_unref (mem);
  gst_object_unref (allocator);

  gchar *desc = g_strdup_printf ("videotestsrc num-buffers=30 ! video/x-raw,format=BGRx,width=640,height=480 ! "
      "vmemexport name=v ! %s", sink);
  GstElement *pipeline = gst_parse_launch (desc, &error);
  g_free (desc);
  if (!pipeline) {
    g_printerr ("%s\n", error->message);
    return 1;
  }
  gst_element_set_state (pipeline, GST_STATE_PLAYING);
  GstBus *bus = gst_element_get_bus (pipeline);
  GstMessage *msg = gst_bus_timed_pop_filtered (bus, GST_CLOCK_TIME_NONE, GST_MESSAGE_EOS | GST_MESSAGE_ERROR);
  int status = 0;
  if (GST_MESSAGE_TYPE (msg) == GST_MESSAGE_ERROR) {
    gst_message_parse_error (msg, &error, NULL);
    g_printerr ("error: %s\n", error->message);
    status = 1;
  }
  gst_message_unref (msg);
  gst_object_unref (bus);

  GstElement *v = gst_bin_get_by_name (GST_BIN (pipeline), "v");
  GstStructure *stats = NULL;
  g_object_get (v, "stats", &stats, NULL);
  gchar *text = gst_structure_to_string (stats);
  g_print ("vmemexport stats: %s\n", text);
  g_free (text);
  gst_structure_free (stats);
  gst_object_unref (v);
  gst_element_set_state (pipeline, GST_STATE_NULL);
  gst_object_unref (pipeline);
  return status;
}
