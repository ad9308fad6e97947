"""Small documents for the store tests (a few chunks each, so embedding stays fast on 2 cores)."""

VOLCANO = (
    "Volcanoes form where magma from the mantle reaches the surface. "
    "Shield volcanoes such as Mauna Loa have gentle slopes built by runny basalt lava.\n\n"
    "Stratovolcanoes are steep cones of ash and lava layers. "
    "Their eruptions are explosive because the magma is thick and traps gas."
)
BREAD = (
    "To bake sourdough bread, feed the starter the night before. "
    "Mix flour, water and salt, then fold the dough every half hour.\n\n"
    "Bake at 250 degrees Celsius in a covered pot for twenty minutes, then uncover it "
    "until the crust is deep brown."
)
TRAINS = (
    "The night train leaves the central station at 22:10 and reaches the coast by morning. "
    "Sleeping cars must be booked in advance; seats can be bought on board."
)
