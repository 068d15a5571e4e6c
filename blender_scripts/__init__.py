"""Code that runs inside Blender (bpy as a module), plus the pure-numpy math it shares with the rest.

Only the modules that need it import `bpy`; camera, frame and motion math are plain numpy.
"""
