"""A plugin that fails while importing."""
raise RuntimeError("this plugin needs a GPU driver")
