"""Starting, watching and stopping the fleet's processes."""
