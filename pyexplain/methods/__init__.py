"""One module per method family; each registers its methods with :func:`pyexplain.registry.register_method`.

Every module in this package is imported when a method is looked up, so a new method needs only
a new module here.
"""
