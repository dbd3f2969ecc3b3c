/*
 * A data yaml's `download:` as YOLOv5's check_dataset runs it when the train/val sources are missing: a URL of a
 * .zip (http, https or file) fetched with libcurl into the datasets folder and unzipped there with libzip, then
 * removed. Scripts (`bash ...`, Python) are not run: y5 executes no code from a yaml.
 */
#pragma once
#include <string>

namespace y5 {

// Fetches url into dest (written as dest.part, renamed when complete), with a progress line on a terminal. A
// y5::Error naming the URL on any failure (HTTP status, network, disk); nothing is left at dest then.
void download_file(const std::string& url, const std::string& dest);

// Extracts every entry of the zip into dir (created). An entry whose name is absolute or climbs out of dir
// ("../") is an error naming it, before anything is written.
void unzip_file(const std::string& zip, const std::string& dir);

// check_dataset's download: url must end in .zip; downloaded into datasets_dir/<its file name>, unzipped there
// and the zip removed, printing YOLOv5's lines. Anything else is an error saying what to do.
void download_dataset(const std::string& yaml, const std::string& url, const std::string& datasets_dir);

}  // namespace y5
