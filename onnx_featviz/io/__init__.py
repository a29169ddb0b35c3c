"""Model and image files, dataset streaming (DATA), preprocessing: the file-system edge."""
