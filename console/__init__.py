"""rounds console: the command line and the Textual screens.

Importing it must stay cheap: no torch, transformers, trl, peft or bitsandbytes at
import time (a test checks). Heavy work is imported lazily by the verb that needs it.
"""
