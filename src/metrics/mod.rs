//! Segmentation metrics (Dice, HD95, volumes, strata), volume agreement and statistics.
