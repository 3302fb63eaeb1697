"""Built-in plugins, registered through the `tryggbro` entry-point group like any other."""
